//! Times the three GEMMs of a pointwise layer's training step (forward with batch norm's
//! moments, weight gradient `Xᵀ·dZ` a block of rows at a time with dZ repacked per block, input
//! gradient `dZ·Wᵀ`) in f32 and bf16, one thread, on 1.0-224's shapes: the minimum of `reps`
//! runs of each.
//!
//! `cargo run --release -p mobilenet-kernels --example train_gemms [images] [reps] [cifar]`
//! (`cifar`: the CIFAR recipe's layers, α 0.5 at 32×32, instead of 1.0-224's)

use std::time::Duration;

use mobilenet_kernels::gemm::{gemm, gemm_moments, gemm_transposed_a, PackedB};
use mobilenet_kernels::{Epilogue, Isa};

mod common;
use common::{fastest, values};

/// Rows of dZ per weight-gradient block, as the trainer takes them.
fn block_rows(cin: usize, cout: usize) -> usize {
    ((32 << 10) / cout).max(cin).clamp(64, 2048)
}

fn main() {
    let images: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(16);
    let reps: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let isa = Isa::detect();
    // The CIFAR recipe's layers (α 0.5, 32×32, small-input stem), or 1.0-224's.
    let cifar = std::env::args().nth(3).as_deref() == Some("cifar");
    let cifar_shapes = [
        (1024, 16, 32),
        (256, 32, 64),
        (256, 64, 64),
        (64, 64, 128),
        (64, 128, 128),
        (16, 128, 256),
        (16, 256, 256),
        (4, 256, 512),
        (4, 512, 512),
    ];
    let paper_shapes = [
        (12544, 32, 64),
        (3136, 64, 128),
        (3136, 128, 128),
        (784, 128, 256),
        (784, 256, 256),
        (196, 256, 512),
        (196, 512, 512),
        (49, 512, 1024),
        (49, 1024, 1024),
    ];
    let shapes = if cifar { cifar_shapes } else { paper_shapes };
    println!("{images} images, one thread, ms (minimum of {reps}); f32 / bf16");
    for (pixels, cin, cout) in shapes {
        let m = pixels * images;
        let (x, w, dz) = (
            values(m * cin, 1),
            values(cin * cout, 2),
            values(m * cout, 3),
        );
        let mut z = vec![0.0f32; m * cout];
        let mut dx = vec![0.0f32; m * cin];
        let mut dw = vec![0.0f32; cin * cout];
        let mut line = format!("{pixels:>5}×{cin:>4}→{cout:<4}");
        for bf16 in [false, true] {
            let pack = |b: &[f32], k, n| match bf16 {
                false => PackedB::new(isa, b, k, n),
                true => PackedB::new_bf16(isa, b, k, n).expect("AVX512-BF16"),
            };
            let fwd = fastest(reps, || {
                let pw = pack(&w, cin, cout);
                let mut moments = vec![0.0f64; 2 * pw.padded_n()];
                gemm_moments(m, (&x, cin), &pw, (&mut z, cout), &mut moments);
            });
            let block = block_rows(cin, cout);
            let wgrad = fastest(reps, || {
                let mut b = pack(&[], 0, cout);
                let mut r = 0;
                while r < m {
                    let n = (m - r).min(block);
                    b.repack(&dz[r * cout..(r + n) * cout], n, cout);
                    let xb = &x[r * cin..(r + n) * cin];
                    gemm_transposed_a(cin, xb, cin, &b, &mut dw, cout, &Epilogue::accumulating());
                    r += n;
                }
            });
            let wt: Vec<f32> = (0..cout * cin)
                .map(|i| w[(i % cin) * cout + i / cin])
                .collect();
            let dgrad = fastest(reps, || {
                let pwt = pack(&wt, cout, cin);
                gemm(m, &dz, cout, &pwt, &mut dx, cin, &Epilogue::linear());
            });
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            line += &format!(
                "  {} fwd {:7.2} wgrad {:7.2} dgrad {:7.2}",
                if bf16 { "bf16" } else { "f32" },
                ms(fwd),
                ms(wgrad),
                ms(dgrad)
            );
        }
        println!("{line}");
    }
}
