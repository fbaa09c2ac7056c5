//! Times the int8 kernels on MobileNet shapes, one thread, for A/B comparisons of kernel
//! changes on a noisy machine: the minimum of many repetitions of each call.
//!
//! `cargo run --release -p mobilenet-kernels --example int8_kernels [reps] [filter]` (only the
//! cases whose line contains `filter`, e.g. `gemm 4096`)
//! (`MOBILENET_INT_ISA` picks the instruction set, as everywhere).

use std::time::Duration;

use mobilenet_kernels::int8::dwconv::{qdwconv3x3, QDwWeights};
use mobilenet_kernels::int8::gemm::stem::{qstem, qstem_supported, QStemWeights};
use mobilenet_kernels::int8::gemm::{qgemm, PackedQB};
use mobilenet_kernels::int8::{im2col3x3, IntIsa, Requant};
use mobilenet_kernels::ConvGeometry;

mod common;
use common::{bytes, fastest};

const COEFF: i32 = -3;
fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let filter = std::env::args().nth(2).unwrap_or_default();
    let isa = IntIsa::detect();
    for fp32 in [false, true] {
        let form = if fp32 { "xnnpack rq" } else { "tflite rq" };
        // Lower bound at the zero point: the ReLU6 layers of a MobileNet.
        let rq = |n: usize| {
            let bias: Vec<i32> = (0..n as i32).map(|j| j * 37 - 500).collect();
            match fp32 {
                true => Requant::fp32(&bias, &[0.0007], 3, 3, 255),
                false => Requant::new(&bias, &[(1 << 30) + 12345], &[-9], 3, 3, 255),
            }
        };
        for (hw, c, stride) in [
            (128, 8, 2),
            (64, 8, 1),
            (64, 32, 1),
            (112, 32, 1),
            (56, 128, 1),
            (28, 256, 2),
            (14, 512, 1),
            (7, 1024, 1),
            (14, 512, 2),
            (8, 128, 1),
            (4, 256, 1),
            (16, 64, 1),
            (32, 32, 2),
        ] {
            let label = format!("{isa} {form} depthwise {hw}x{hw}x{c} s{stride}");
            if !label.contains(&filter) {
                continue;
            }
            let g = ConvGeometry::tf_same(hw, hw, 3, stride);
            let input = bytes(hw * hw * c, 7);
            let wts: Vec<i32> = bytes(9 * c, 9).iter().map(|&v| v as i32 - 128).collect();
            let w = QDwWeights::new(&wts, c, 120);
            let r = rq(c);
            let mut out = vec![0u8; g.out_h * g.out_w * c];
            let t = fastest(reps, || qdwconv3x3(isa, &g, &input, &w, &r, &mut out, 0));
            let macs = (g.out_h * g.out_w * c * 9) as f64;
            println!(
                "{label}: {:.4} ms, {:.1} G multiply-adds/s",
                t.as_secs_f64() * 1e3,
                macs / t.as_secs_f64() / 1e9
            );
        }
        for (hw, stride) in [(128, 2), (224, 2)] {
            let label = format!("{isa} {form} im2col {hw}x{hw}x3 s{stride}");
            if fp32 || !label.contains(&filter) {
                continue;
            }
            let g = ConvGeometry::tf_same(hw, hw, 3, stride);
            let input = bytes(hw * hw * 3, 7);
            let mut col = vec![0u8; g.out_h * g.out_w * 28];
            let t = fastest(reps, || {
                im2col3x3(&g, 3, &input, 9, 0..g.out_h, 28, &mut col)
            });
            println!("{label}: {:.4} ms", t.as_secs_f64() * 1e3);
        }
        // The stem: im2col + GEMM against the direct kernel (uint8 row sums on).
        for (hw, n) in [(128, 8), (160, 16), (224, 32)] {
            let label = format!("{isa} {form} stem {hw}x{hw}x3 s2 ->{n}");
            if !label.contains(&filter) {
                continue;
            }
            let g = ConvGeometry::tf_same(hw, hw, 3, 2);
            let input = bytes(hw * hw * 3, 7);
            let wts: Vec<i8> = bytes(n * 27, 5).iter().map(|&v| v as i8).collect();
            let mut padded = vec![0i8; n * 28];
            for j in 0..n {
                padded[j * 28..][..27].copy_from_slice(&wts[j * 27..][..27]);
            }
            let b = PackedQB::new(&padded, 28, n);
            let sw = QStemWeights::new(&wts, 3, n).expect("three channels");
            let r = rq(n);
            let pixels = g.out_h * g.out_w;
            let (mut col, mut out) = (vec![0u8; pixels * 28], vec![0u8; pixels * n]);
            let t_im2col = fastest(reps, || {
                im2col3x3(&g, 3, &input, 9, 0..g.out_h, 28, &mut col);
                qgemm(
                    isa,
                    pixels,
                    &col,
                    28,
                    &b,
                    -3,
                    &r,
                    &mut out,
                    n,
                    0..b.panels(),
                );
            });
            let direct = qstem_supported(isa, &g, &sw, COEFF);
            let t_direct = fastest(if direct { reps } else { 0 }, || {
                qstem(isa, &g, &input, 9, &sw, COEFF, &r, &mut out, 0)
            });
            println!(
                "{label}: im2col + gemm {:.4} ms, direct {}",
                t_im2col.as_secs_f64() * 1e3,
                match direct {
                    true => format!("{:.4} ms", t_direct.as_secs_f64() * 1e3),
                    false => "not on this CPU".into(),
                }
            );
        }
        for (m, k, n) in [
            (4096, 28, 8),
            (4096, 8, 16),
            (12544, 32, 64),
            (3136, 128, 128),
            (196, 512, 512),
        ] {
            let label = format!("{isa} {form} gemm {m}x{k}->{n}");
            if !label.contains(&filter) {
                continue;
            }
            let a = bytes(m * k, 3);
            let wts: Vec<i8> = bytes(n * k, 5).iter().map(|&v| v as i8).collect();
            let b = PackedQB::new(&wts, k, n);
            let r = rq(n);
            let mut c = vec![0u8; m * n];
            let t = fastest(reps, || {
                qgemm(isa, m, &a, k, &b, -3, &r, &mut c, n, 0..b.panels())
            });
            let macs = (m * k * n) as f64;
            println!(
                "{label}: {:.4} ms, {:.1} G multiply-adds/s",
                t.as_secs_f64() * 1e3,
                macs / t.as_secs_f64() / 1e9
            );
        }
        // A depthwise + pointwise pair as two whole-image steps, then band by band (as the
        // engine's fused step), alternating, each the fastest of `reps`.
        for (hw, c, n, stride, band_bytes) in [
            (112, 32, 64, 1, 32 << 10),
            (112, 32, 64, 1, 16 << 10),
            (112, 32, 64, 1, 64 << 10),
            (56, 128, 128, 1, 32 << 10),
            (28, 256, 256, 1, 32 << 10),
        ] {
            let label = format!("{isa} {form} separable {hw}x{hw} {c}->{n} s{stride}");
            if !label.contains(&filter) {
                continue;
            }
            let g = ConvGeometry::tf_same(hw, hw, 3, stride);
            let input = bytes(hw * hw * c, 7);
            let dww: Vec<i32> = bytes(9 * c, 9).iter().map(|&v| v as i32 - 128).collect();
            let dw = QDwWeights::new(&dww, c, 120);
            let pww: Vec<i8> = bytes(n * c, 5).iter().map(|&v| v as i8).collect();
            let b = PackedQB::new(&pww, c, n);
            let (r_dw, r_pw) = (rq(c), rq(n));
            let pixels = g.out_h * g.out_w;
            let (mut mid, mut out) = (vec![0u8; pixels * c], vec![0u8; pixels * n]);
            let (mut mid2, mut out2) = (mid.clone(), out.clone());
            let mut whole = || {
                qdwconv3x3(isa, &g, &input, &dw, &r_dw, &mut mid2, 0);
                qgemm(
                    isa,
                    pixels,
                    &mid2,
                    c,
                    &b,
                    0,
                    &r_pw,
                    &mut out2,
                    n,
                    0..b.panels(),
                );
            };
            let band_rows = (band_bytes / (g.out_w * c)).max(1);
            let mut banded = || {
                for (i, band) in out.chunks_mut(band_rows * g.out_w * n).enumerate() {
                    let px = band.len() / n;
                    let tmp = &mut mid[..px * c];
                    qdwconv3x3(isa, &g, &input, &dw, &r_dw, tmp, i * band_rows);
                    qgemm(isa, px, tmp, c, &b, 0, &r_pw, band, n, 0..b.panels());
                }
            };
            let (mut t_whole, mut t_band) = (Duration::MAX, Duration::MAX);
            for _ in 0..10 {
                t_whole = t_whole.min(fastest(reps / 10, &mut whole));
                t_band = t_band.min(fastest(reps / 10, &mut banded));
            }
            println!(
                "{label}: two steps {:.4} ms, bands of {} KB {:.4} ms",
                t_whole.as_secs_f64() * 1e3,
                band_bytes >> 10,
                t_band.as_secs_f64() * 1e3
            );
        }
    }
}
