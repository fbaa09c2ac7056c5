//! Times the direct backward kernels of a training step — the depthwise layers' weight and
//! input gradients and the stem's weight gradient — per image, one thread, on the CIFAR
//! recipe's shapes (α 0.5, 32×32, small-input stem, symmetric padding) and on 1.0-224's: the
//! minimum of `reps` runs of each, µs per image.
//!
//! `cargo run --release -p mobilenet-kernels --example train_backward [reps]`

use std::time::Duration;

use mobilenet_kernels::backward::{
    conv2d_backward_weights, dwconv3x3_backward_input, dwconv3x3_backward_weights,
};
use mobilenet_kernels::conv::ConvShape;
use mobilenet_kernels::{ConvGeometry, Isa};

mod common;
use common::{fastest, values};

/// A 3×3 geometry padded by one on every side (TF's SAME at stride 1, symmetric at 2).
fn geometry(hw: usize, stride: usize) -> ConvGeometry {
    let out = (hw - 1) / stride + 1;
    ConvGeometry {
        in_h: hw,
        in_w: hw,
        out_h: out,
        out_w: out,
        stride,
        pad_top: 1,
        pad_left: 1,
    }
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let isa = Isa::detect();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("one thread, µs per image (minimum of {reps}); {isa}");
    println!("depthwise           weights    input");
    for (hw, c, stride) in [
        (32, 16, 1),
        (32, 32, 2),
        (16, 64, 1),
        (16, 64, 2),
        (8, 128, 1),
        (8, 128, 2),
        (4, 256, 1),
        (4, 256, 2),
        (2, 512, 1),
        (112, 32, 1),
        (56, 128, 1),
        (14, 512, 1),
    ] {
        let g = geometry(hw, stride);
        let x = values(hw * hw * c, 1);
        let dy = values(g.out_h * g.out_w * c, 2);
        let w = values(9 * c, 3);
        let (mut dw, mut dx) = (vec![0.0; 9 * c], vec![0.0; hw * hw * c]);
        let tw = fastest(reps, || {
            dwconv3x3_backward_weights(isa, &g, c, &x, &dy, &mut dw)
        });
        let ti = fastest(reps, || {
            dwconv3x3_backward_input(isa, &g, c, &dy, &w, &mut dx)
        });
        let name = format!("{hw}x{hw}x{c} s{stride}");
        println!("{name:<18} {:8.2} {:8.2}", us(tw), us(ti));
    }
    println!("stem weights");
    for (hw, cout, stride) in [(32, 16, 1), (224, 32, 2)] {
        let g = geometry(hw, stride);
        let shape = ConvShape { k: 3, cin: 3, cout };
        let x = values(hw * hw * 3, 1);
        let dy = values(g.out_h * g.out_w * cout, 2);
        let mut dw = vec![0.0; 27 * cout];
        let t = fastest(reps, || {
            conv2d_backward_weights(isa, &g, shape, &x, &dy, &mut dw)
        });
        let name = format!("{hw}x{hw}x3->{cout} s{stride}");
        println!("{name:<18} {:8.2}", us(t));
    }
}
