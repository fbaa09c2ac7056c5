//! Times batch norm's four training passes (moments, normalise + clamp, the backward sums and
//! the backward apply) on the CIFAR recipe's largest shapes, once with the operands in cache
//! and once read from memory (a 64 MB buffer walked before each run): µs, minimum of `reps`.
//!
//! `cargo run --release -p mobilenet-kernels --example bn_passes [reps] [paper]` (`paper`:
//! 1.0-224 at batch 32 instead)

use std::time::Duration;

use mobilenet_kernels::bn::{affine_clamp, backward_apply, backward_sums, channel_moments, BnAct};
use mobilenet_kernels::Isa;

mod common;
use common::fastest_after;

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let isa = Isa::detect();
    let mut big = vec![1u8; 64 << 20];
    let mut evict = || {
        for i in (0..big.len()).step_by(64) {
            big[i] = big[i].wrapping_add(1);
        }
    };
    println!("µs, minimum of {reps}, in cache / from memory; {isa}");
    println!("rows×c          moments        affine         bwd sums       bwd apply");
    // 64 images of 32×32×16, 32×32×32, 16×16×64, 8×8×128.
    let paper = std::env::args().nth(2).as_deref() == Some("paper");
    let shapes = match paper {
        // 1.0-224 at batch 32: 112×112×64, 56×56×128, 14×14×512.
        true => [(401408, 64), (100352, 128), (6272, 512), (100352, 64)],
        false => [(65536, 16), (65536, 32), (16384, 64), (4096, 128)],
    };
    for (rows, c) in shapes {
        let n = rows * c;
        let z: Vec<f32> = (0..n)
            .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let da: Vec<f32> = (0..n)
            .map(|i| (i * 104729 % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut out = vec![0.0f32; n];
        let (half, one, zero) = (vec![0.5f32; c], vec![1.0f32; c], vec![0.0f32; c]);
        let bn = BnAct {
            mean: &zero,
            inv_std: &one,
            scale: &one,
            shift: &half,
            hi: 6.0,
        };
        let (mut s1, mut s2) = (vec![0.0; c], vec![0.0; c]);
        let mut line = format!("{rows:>6}×{c:<4}");
        for pass in 0..4 {
            let mut run = || match pass {
                0 => channel_moments(isa, &z, c, &mut s1, &mut s2),
                1 => affine_clamp(isa, &z, c, &one, &zero, 0.0, 6.0, &mut out),
                2 => backward_sums(isa, (&z, &da), c, &bn, &mut s1, &mut s2),
                _ => backward_apply(isa, (&z, &da), c, &bn, (&one, &zero, &zero), &mut out),
            };
            let hot = fastest_after(reps, || {}, &mut run);
            let cold = fastest_after(reps, &mut evict, &mut run);
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            line += &format!("  {:5.0} / {:5.0}", us(hot), us(cold));
        }
        println!("{line}");
    }
}
