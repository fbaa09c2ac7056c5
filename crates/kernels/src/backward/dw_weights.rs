//! The depthwise 3×3 convolution's weight gradient: the nine taps' sums of a vector of
//! channels in registers over a band of rows, added to `dw` once per band.

use super::{load_n, store_n, tap, K};
use crate::simd::SimdF32;
use crate::ConvGeometry;

/// Bytes of dy and x a band of output rows reads: the band is read once per vector of
/// channels, so it should stay in L2 between them.
const BAND_BYTES: usize = 128 << 10;

/// `dw += ∂/∂w` of one image (see [`super::dwconv3x3_backward_weights`]) at stride `ST` (0:
/// any stride, `g.stride`).
///
/// Bands of output rows, and in each, one vector of channels at a time with its nine sums in
/// registers (summing into dw in memory per pixel and tap was a load and a store per
/// multiply-add: CIFAR's depthwise backward was 25% of a training step). Rows above and below
/// the image read a row of zeros, and the columns whose taps all lie inside (all but one or
/// two) take no checks. (Vectors of channels outside the rows streamed a 56×56×128 image from
/// memory once per vector, eight times.)
///
/// # Safety
///
/// `x` holds `in_h·in_w·c` values, `dy` `out_h·out_w·c`, `dw` `9·c`; the instruction set of
/// `S` is available; `ST` is 0 or `g.stride`.
#[inline(always)]
pub(super) unsafe fn weights<S: SimdF32, const ST: usize>(
    s: S,
    g: &ConvGeometry,
    c: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    // A stride of 1 or 2 known when compiled (ST), else g's (ST = 0): the window's loads.
    let stride = if ST == 0 { g.stride } else { ST };
    let zeros = vec![0.0f32; g.in_w * c];
    let (lo, hi) = inside_cols(g);
    let row_bytes = (g.out_w + g.stride * g.in_w) * c * 4;
    let band = (BAND_BYTES / row_bytes.max(1)).max(1);
    // Safety: every x read is of a pixel inside the image (or the zero row) and channels < c,
    // every dy read of an output pixel; dw holds 9·c values.
    unsafe {
        for oy0 in (0..g.out_h).step_by(band) {
            for c0 in (0..c).step_by(S::LANES) {
                let n = (c - c0).min(S::LANES);
                let mut acc = [s.zero(); K * K];
                for oy in oy0..(oy0 + band).min(g.out_h) {
                    let rows = [0, 1, 2].map(|ky| {
                        let row = match tap(oy, ky, g.stride, g.pad_top, g.in_h) {
                            Some(iy) => x.as_ptr().add(iy * g.in_w * c),
                            None => zeros.as_ptr(),
                        };
                        row.add(c0)
                    });
                    let d_row = dy.as_ptr().add(oy * g.out_w * c + c0);
                    for ox in (0..lo).chain(hi..g.out_w) {
                        let d = load_n(s, n, d_row.add(ox * c));
                        for (ky, row) in rows.iter().enumerate() {
                            for kx in 0..K {
                                let Some(ix) = tap(ox, kx, g.stride, g.pad_left, g.in_w) else {
                                    continue;
                                };
                                let xi = load_n(s, n, row.add(ix * c));
                                acc[ky * K + kx] = s.fma(d, xi, acc[ky * K + kx]);
                            }
                        }
                    }
                    if lo == hi {
                        continue;
                    }
                    // The interior: each input column is loaded once and kept in registers
                    // for the outputs that read it (a window of three columns a filter row,
                    // sliding by the stride): at stride 1 three loads an output, not nine.
                    let first = (lo * stride - g.pad_left) * c;
                    let mut win = [[s.zero(); K]; K];
                    for (ky, row) in rows.iter().enumerate() {
                        win[ky][0] = load_n(s, n, row.add(first));
                        if stride == 1 {
                            win[ky][1] = load_n(s, n, row.add(first + c));
                        }
                    }
                    for ox in lo..hi {
                        let d = load_n(s, n, d_row.add(ox * c));
                        let at = (ox * stride - g.pad_left) * c;
                        for (ky, row) in rows.iter().enumerate() {
                            if stride != 1 {
                                win[ky][1] = load_n(s, n, row.add(at + c));
                            }
                            win[ky][2] = load_n(s, n, row.add(at + 2 * c));
                            for kx in 0..K {
                                acc[ky * K + kx] = s.fma(d, win[ky][kx], acc[ky * K + kx]);
                            }
                            // Slide: the next output's first column(s).
                            win[ky][0] = match stride {
                                1 => win[ky][1],
                                _ => win[ky][2],
                            };
                            win[ky][1] = win[ky][2];
                        }
                    }
                }
                for (t, a) in acc.iter().enumerate() {
                    let dst = dw.as_mut_ptr().add(t * c + c0);
                    store_n(s, n, dst, s.add(load_n(s, n, dst), *a));
                }
            }
        }
    }
}

/// The output columns `lo..hi` whose three taps all lie inside the image's columns.
fn inside_cols(g: &ConvGeometry) -> (usize, usize) {
    let lo = g.pad_left.div_ceil(g.stride).min(g.out_w);
    let hi = match (g.in_w + g.pad_left).checked_sub(K) {
        Some(last) => (last / g.stride + 1).clamp(lo, g.out_w),
        None => lo,
    };
    (lo, hi)
}
