//! Integer kernels for quantized MobileNets, bit-exact with TFLite's reference kernels.
//!
//! Activations are unsigned bytes with a zero point (int8 models are shifted by 128 into this
//! domain, which changes no product: `(x + 128) − (z + 128) = x − z`). Weights are signed bytes:
//! uint8 weights are stored as `w − 128` and the missing `(128 − w_zp)·Σx` is added per row
//! from the row sums of A. Accumulation is exact in i32; requantization follows gemmlowp's
//! fixed-point arithmetic ([`requantize`]), so every variant gives the same bytes as the scalar
//! definition — which the tests check on every instruction set this CPU has.
//!
//! | kernel | what |
//! |---|---|
//! | [`gemm::qgemm`] | `C = requant(A·B)`, u8 × s8 → i32, B packed once: 1×1 convs, FC, the stem after [`im2col3x3`] |
//! | [`dwconv::qdwconv3x3`] | depthwise 3×3, stride 1/2, TF padding, NHWC |
//! | [`avg_pool`] | global average pool with TFLite's rounding |

pub mod dwconv;
pub mod gemm;
mod isa;
mod requant;

pub use isa::{IntIsa, IntIsaKind};
pub use requant::{
    requantize, rounding_divide_by_pot, saturating_rounding_doubling_high_mul, Requant,
};

use crate::ConvGeometry;
/// Gathers 3×3 patches of a `[in_h, in_w, cin]` u8 image for output rows `rows` into
/// `[pixels, kp]` rows of `kp ≥ 9·cin` bytes (`ky, kx, c` order; taps outside the image read
/// `pad`, the input's zero point; bytes past `9·cin` are 0), so a GEMM computes the stem.
pub fn im2col3x3(
    g: &ConvGeometry,
    cin: usize,
    input: &[u8],
    pad: u8,
    rows: std::ops::Range<usize>,
    kp: usize,
    out: &mut [u8],
) {
    assert!(kp >= 9 * cin && input.len() >= g.in_h * g.in_w * cin);
    assert!(out.len() >= rows.len() * g.out_w * kp && rows.end <= g.out_h);
    if cin == 3 {
        im2col_rows::<3>(g, cin, input, pad, rows, kp, out);
    } else {
        im2col_rows::<0>(g, cin, input, pad, rows, kp, out);
    }
}

/// [`im2col3x3`] with the channel count fixed at compile time (`CIN > 0`) or read from the
/// argument (`CIN = 0`). A kernel row inside the image is one copy of `3·cin` bytes.
fn im2col_rows<const CIN: usize>(
    g: &ConvGeometry,
    cin: usize,
    input: &[u8],
    pad: u8,
    rows: std::ops::Range<usize>,
    kp: usize,
    out: &mut [u8],
) {
    let cin = if CIN > 0 { CIN } else { cin };
    let span = 3 * cin;
    for (r, oy) in rows.enumerate() {
        for ox in 0..g.out_w {
            let dst = &mut out[(r * g.out_w + ox) * kp..][..kp];
            dst[9 * cin..].fill(0);
            let x0 = (ox * g.stride)
                .checked_sub(g.pad_left)
                .filter(|&v| v + 3 <= g.in_w);
            for ky in 0..3 {
                let iy = (oy * g.stride + ky)
                    .checked_sub(g.pad_top)
                    .filter(|&v| v < g.in_h);
                let d = &mut dst[ky * span..][..span];
                match (iy, x0) {
                    (Some(iy), Some(ix)) => {
                        d.copy_from_slice(&input[(iy * g.in_w + ix) * cin..][..span])
                    }
                    (None, _) => d.fill(pad),
                    (Some(iy), None) => {
                        for kx in 0..3 {
                            let ix = (ox * g.stride + kx)
                                .checked_sub(g.pad_left)
                                .filter(|&v| v < g.in_w);
                            let d = &mut d[kx * cin..][..cin];
                            match ix {
                                Some(ix) => {
                                    d.copy_from_slice(&input[(iy * g.in_w + ix) * cin..][..cin])
                                }
                                None => d.fill(pad),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Global average pool of `[pixels, c]` bytes with TFLite's rounding: the sum of the values
/// in their native domain (`x − offset`: 0 for uint8 models, 128 for int8) divided by the
/// count, rounded half away from zero, shifted back and clamped to `min..=max`.
pub fn avg_pool(
    input: &[u8],
    pixels: usize,
    c: usize,
    offset: i32,
    min: u8,
    max: u8,
    out: &mut [u8],
) {
    assert!(input.len() >= pixels * c && out.len() >= c && pixels > 0);
    let mut sums = vec![0i32; c];
    for px in input[..pixels * c].chunks_exact(c) {
        for (s, &v) in sums.iter_mut().zip(px) {
            *s += v as i32;
        }
    }
    let n = pixels as i32;
    for (o, s) in out.iter_mut().zip(sums) {
        let s = s - offset * n;
        let avg = if s > 0 {
            (s + n / 2) / n
        } else {
            (s - n / 2) / n
        };
        *o = (avg + offset).clamp(min as i32, max as i32) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn im2col_matches_its_definition() {
        for &(hw, cin, stride) in &[
            (1, 3, 2),
            (5, 3, 1),
            (8, 3, 2),
            (9, 3, 2),
            (7, 4, 1),
            (6, 1, 2),
        ] {
            let g = ConvGeometry::tf_same(hw, hw, 3, stride);
            let input: Vec<u8> = (0..hw * hw * cin).map(|i| (i * 37 % 251) as u8).collect();
            let kp = (9 * cin).div_ceil(4) * 4;
            let mut got = vec![0xaa; g.out_h * g.out_w * kp];
            im2col3x3(&g, cin, &input, 7, 0..g.out_h, kp, &mut got);
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    for k in 0..kp {
                        let want = if k >= 9 * cin {
                            0
                        } else {
                            let (ky, kx, ch) = (k / (3 * cin), k / cin % 3, k % cin);
                            let iy = (oy * stride + ky)
                                .checked_sub(g.pad_top)
                                .filter(|&v| v < hw);
                            let ix = (ox * stride + kx)
                                .checked_sub(g.pad_left)
                                .filter(|&v| v < hw);
                            match (iy, ix) {
                                (Some(iy), Some(ix)) => input[(iy * hw + ix) * cin + ch],
                                _ => 7,
                            }
                        };
                        assert_eq!(
                            got[(oy * g.out_w + ox) * kp + k],
                            want,
                            "{hw} {cin} {stride} ({oy},{ox}) {k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn avg_pool_rounds_half_away_from_zero_in_the_native_domain() {
        // int8 values −1, 0 (offset 128): sum −1 over 2 → −0.5 → −1.
        let mut out = [0u8; 1];
        avg_pool(&[127, 128], 2, 1, 128, 0, 255, &mut out);
        assert_eq!(out[0], 127);
        // uint8 values 1, 2 → 1.5 → 2.
        avg_pool(&[1, 2], 2, 1, 0, 0, 255, &mut out);
        assert_eq!(out[0], 2);
    }
}
