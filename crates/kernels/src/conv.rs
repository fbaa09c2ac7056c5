//! Direct k×k convolution in NHWC with HWIO weights, vectorised over output channels.
//!
//! Used for MobileNet's stem (3×3, stride 2, 3 input channels), where a GEMM would waste
//! most of its tile on a K of 27. Convolutions with many input channels (the paper's full-conv
//! network, SSD's extra layers) go through [`im2col`] and the GEMM instead: the direct loop
//! reaches a few GFLOP/s there, the GEMM its peak.

use crate::simd::SimdF32;
use crate::RowsCall;
use crate::{ConvGeometry, Epilogue, Isa};

/// Shape of a direct convolution: kernel size and channel counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Kernel height and width.
    pub k: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
}

/// k×k convolution of one image, writing output rows `row0 .. row0 + n`.
///
/// - `input`: `[in_h, in_w, cin]`
/// - `weights`: `[k, k, cin, cout]` (HWIO, TensorFlow's layout)
/// - `output`: rows `row0 ..` of `[out_h, out_w, cout]`
///
/// # Panics
///
/// If a slice is shorter than its shape says or the band reaches past `out_h`.
#[allow(clippy::too_many_arguments)] // the geometry of a conv is this many numbers
pub fn conv2d(
    isa: Isa,
    g: &ConvGeometry,
    shape: ConvShape,
    input: &[f32],
    weights: &[f32],
    epi: &Epilogue,
    output: &mut [f32],
    row0: usize,
) {
    let ConvShape { k, cin, cout } = shape;
    let row_len = g.out_w * cout;
    assert!(
        row_len > 0 && output.len().is_multiple_of(row_len),
        "output is not whole rows"
    );
    let rows = output.len() / row_len;
    assert!(row0 + rows <= g.out_h, "output rows past out_h");
    assert!(
        input.len() >= g.in_h * g.in_w * cin,
        "input shorter than in_h·in_w·cin"
    );
    assert!(
        weights.len() >= k * k * cin * cout,
        "weights shorter than k·k·cin·cout"
    );
    if let Some(b) = epi.bias {
        assert!(b.len() >= cout, "bias shorter than cout");
    }
    assert!(
        !epi.accumulate,
        "accumulating epilogues are only supported by gemm"
    );
    // Safety (of the variants): slices are as long as their shapes (checked above).
    let call = (g, shape, input, weights, epi, output, row0, rows);
    crate::simd_dispatch!(isa, (call: RowsCall<'_, ConvShape>) {
        avx512: conv_rows::<_, 8>,
        avx2: conv_rows::<_, 4>,
        neon: conv_rows::<_, 4>,
        wasm: conv_rows::<_, 4>,
        scalar: conv_rows::<_, 4>,
    })
}

/// Output columns `[lo, hi)` whose k input columns all lie inside the image.
fn interior(g: &ConvGeometry, k: usize) -> (usize, usize) {
    let lo = g.pad_left.div_ceil(g.stride).min(g.out_w);
    let hi = if g.in_w + g.pad_left >= k {
        ((g.in_w + g.pad_left - k) / g.stride + 1).clamp(lo, g.out_w)
    } else {
        lo
    };
    (lo, hi)
}

#[inline(always)]
unsafe fn conv_rows<S: SimdF32, const P: usize>(s: S, call: RowsCall<'_, ConvShape>) {
    let (g, shape, input, weights, epi, output, row0, rows) = call;
    let ConvShape { k, cin, cout } = shape;
    let lanes = S::LANES;
    let (x_lo, x_hi) = interior(g, k);
    // Safety: every index below is inside the slices: taps are bounds-checked against the
    // image (or lie in the interior range), channel blocks against cout, rows against `rows`.
    unsafe {
        let (lo, hi) = (s.splat(epi.min), s.splat(epi.max));
        let inp = input.as_ptr();
        let wp = weights.as_ptr();
        let out = output.as_mut_ptr();
        // Macros rather than closures: closures do not inherit #[target_feature].
        macro_rules! ld {
            ($p:expr, $n:expr) => {
                if $n == lanes {
                    s.load($p)
                } else {
                    s.load_partial($p, $n)
                }
            };
        }
        macro_rules! st {
            ($p:expr, $v:expr, $n:expr) => {{
                let v = s.min(s.max($v, lo), hi);
                if $n == lanes {
                    s.store($p, v)
                } else {
                    s.store_partial($p, v, $n)
                }
            }};
        }
        for r in 0..rows {
            let oy = row0 + r;
            let iy0 = (oy * g.stride) as isize - g.pad_top as isize;
            let ky_lo = (-iy0).max(0) as usize;
            let ky_hi = (g.in_h as isize - iy0).clamp(0, k as isize) as usize;
            let out_row = out.add(r * g.out_w * cout);
            let mut cb = 0;
            while cb < cout {
                let n = (cout - cb).min(lanes);
                let bias = match epi.bias {
                    Some(b) => ld!(b.as_ptr().add(cb), n),
                    None => s.zero(),
                };
                // One output column, any position: taps checked against the image.
                macro_rules! one {
                    ($ox:expr) => {{
                        let ix0 = ($ox * g.stride) as isize - g.pad_left as isize;
                        let kx_lo = (-ix0).max(0) as usize;
                        let kx_hi = (g.in_w as isize - ix0).clamp(0, k as isize) as usize;
                        let mut acc = bias;
                        for ky in ky_lo..ky_hi {
                            let iy = (iy0 + ky as isize) as usize;
                            for kx in kx_lo..kx_hi {
                                let ix = (ix0 + kx as isize) as usize;
                                let px = inp.add((iy * g.in_w + ix) * cin);
                                let wrow = wp.add((ky * k + kx) * cin * cout + cb);
                                for ci in 0..cin {
                                    let wv = ld!(wrow.add(ci * cout), n);
                                    acc = s.fma(s.splat(*px.add(ci)), wv, acc);
                                }
                            }
                        }
                        st!(out_row.add($ox * cout + cb), acc, n);
                    }};
                }
                for ox in 0..x_lo {
                    one!(ox);
                }
                // Interior columns, P at a time: P independent accumulator chains. When two
                // full channel blocks remain they are done together, so each input value
                // broadcast feeds two FMAs (the stem has 3 input channels and 32 outputs: the
                // broadcasts, not the FMAs, would otherwise bound it).
                let pair = n == lanes && cb + 2 * lanes <= cout;
                let bias2 = if pair {
                    match epi.bias {
                        Some(b) => s.load(b.as_ptr().add(cb + lanes)),
                        None => s.zero(),
                    }
                } else {
                    s.zero()
                };
                let mut ox = x_lo;
                while ox + P <= x_hi {
                    let ix0 = ox * g.stride - g.pad_left;
                    let mut acc = [bias; P];
                    let mut acc2 = [bias2; P];
                    for ky in ky_lo..ky_hi {
                        let iy = (iy0 + ky as isize) as usize;
                        for kx in 0..k {
                            let px = inp.add((iy * g.in_w + ix0 + kx) * cin);
                            let wrow = wp.add((ky * k + kx) * cin * cout + cb);
                            for ci in 0..cin {
                                let wv = ld!(wrow.add(ci * cout), n);
                                if pair {
                                    let wv2 = s.load(wrow.add(ci * cout + lanes));
                                    for p in 0..P {
                                        let x = s.splat(*px.add(p * g.stride * cin + ci));
                                        acc[p] = s.fma(x, wv, acc[p]);
                                        acc2[p] = s.fma(x, wv2, acc2[p]);
                                    }
                                } else {
                                    for (p, a) in acc.iter_mut().enumerate() {
                                        let x = *px.add(p * g.stride * cin + ci);
                                        *a = s.fma(s.splat(x), wv, *a);
                                    }
                                }
                            }
                        }
                    }
                    for p in 0..P {
                        st!(out_row.add((ox + p) * cout + cb), acc[p], n);
                        if pair {
                            st!(out_row.add((ox + p) * cout + cb + lanes), acc2[p], lanes);
                        }
                    }
                    ox += P;
                }
                if pair {
                    // The second block's edge and leftover columns, one at a time.
                    let (cb, bias, n) = (cb + lanes, bias2, lanes);
                    macro_rules! one2 {
                        ($ox:expr) => {{
                            let ix0 = ($ox * g.stride) as isize - g.pad_left as isize;
                            let kx_lo = (-ix0).max(0) as usize;
                            let kx_hi = (g.in_w as isize - ix0).clamp(0, k as isize) as usize;
                            let mut acc = bias;
                            for ky in ky_lo..ky_hi {
                                let iy = (iy0 + ky as isize) as usize;
                                for kx in kx_lo..kx_hi {
                                    let ix = (ix0 + kx as isize) as usize;
                                    let px = inp.add((iy * g.in_w + ix) * cin);
                                    let wrow = wp.add((ky * k + kx) * cin * cout + cb);
                                    for ci in 0..cin {
                                        let wv = s.load(wrow.add(ci * cout));
                                        acc = s.fma(s.splat(*px.add(ci)), wv, acc);
                                    }
                                }
                            }
                            st!(out_row.add($ox * cout + cb), acc, n);
                        }};
                    }
                    for ox2 in (0..x_lo).chain(ox..g.out_w) {
                        one2!(ox2);
                    }
                }
                for ox in ox..g.out_w {
                    one!(ox);
                }
                cb += if pair { 2 * lanes } else { lanes };
            }
        }
    }
}

/// Writes the k×k patches of output rows `row0 ..` (`out.len() / (k·k·cin)` pixels, whole
/// rows) as the rows of a matrix `[pixels, k·k·cin]`, columns in HWIO order `(ky, kx, ci)`, so
/// that the patch matrix times the `[k·k·cin, cout]` weights is the convolution. Padding is
/// zeros.
///
/// # Panics
///
/// If `out` is not whole output rows or reaches past `out_h`, or `input` is short.
pub fn im2col(g: &ConvGeometry, k: usize, cin: usize, input: &[f32], out: &mut [f32], row0: usize) {
    let patch = k * k * cin;
    assert!(
        patch > 0 && out.len().is_multiple_of(patch * g.out_w),
        "out is not whole rows"
    );
    let rows = out.len() / (patch * g.out_w);
    assert!(row0 + rows <= g.out_h, "rows past out_h");
    assert!(
        input.len() >= g.in_h * g.in_w * cin,
        "input shorter than in_h·in_w·cin"
    );
    for (p, dst) in out.chunks_exact_mut(patch).enumerate() {
        let (oy, ox) = (row0 + p / g.out_w, p % g.out_w);
        for ky in 0..k {
            let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
            for kx in 0..k {
                let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
                let d = &mut dst[(ky * k + kx) * cin..][..cin];
                if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                    d.fill(0.0);
                } else {
                    d.copy_from_slice(&input[(iy as usize * g.in_w + ix as usize) * cin..][..cin]);
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each patch row of `cols` (output rows `row0 ..`) back onto
/// the input positions it was read from (`input_grad`, `[in_h, in_w, cin]`, accumulated), so
/// that `col2im(dcols)` is the input gradient when `dcols` is the patch matrix's gradient.
///
/// # Panics
///
/// As [`im2col`].
pub fn col2im(
    g: &ConvGeometry,
    k: usize,
    cin: usize,
    cols: &[f32],
    input_grad: &mut [f32],
    row0: usize,
) {
    let patch = k * k * cin;
    assert!(
        patch > 0 && cols.len().is_multiple_of(patch * g.out_w),
        "cols is not whole rows"
    );
    let rows = cols.len() / (patch * g.out_w);
    assert!(row0 + rows <= g.out_h, "rows past out_h");
    assert!(
        input_grad.len() >= g.in_h * g.in_w * cin,
        "input_grad shorter than in_h·in_w·cin"
    );
    for (p, src) in cols.chunks_exact(patch).enumerate() {
        let (oy, ox) = (row0 + p / g.out_w, p % g.out_w);
        for ky in 0..k {
            let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
            if iy < 0 || iy >= g.in_h as isize {
                continue;
            }
            for kx in 0..k {
                let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
                if ix < 0 || ix >= g.in_w as isize {
                    continue;
                }
                let d = &mut input_grad[(iy as usize * g.in_w + ix as usize) * cin..][..cin];
                for (d, s) in d.iter_mut().zip(&src[(ky * k + kx) * cin..][..cin]) {
                    *d += s;
                }
            }
        }
    }
}

/// The obviously-correct definition of [`conv2d`], for tests.
pub fn conv2d_reference(
    g: &ConvGeometry,
    shape: ConvShape,
    input: &[f32],
    weights: &[f32],
    epi: &Epilogue,
) -> Vec<f32> {
    let ConvShape { k, cin, cout } = shape;
    let mut out = vec![0.0; g.out_h * g.out_w * cout];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            for co in 0..cout {
                let mut acc = 0.0f32;
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
                        let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
                        if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                            continue;
                        }
                        for ci in 0..cin {
                            let x = input[(iy as usize * g.in_w + ix as usize) * cin + ci];
                            acc += x * weights[((ky * k + kx) * cin + ci) * cout + co];
                        }
                    }
                }
                out[(oy * g.out_w + ox) * cout + co] = epi.apply(co, acc);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, Rng};

    /// `<im2col(x), y> = <x, col2im(y)>`: col2im is im2col's adjoint.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for (in_h, in_w, stride, same) in [(7, 5, 2, true), (6, 6, 1, false), (2, 3, 2, true)] {
            let (k, cin) = (3, 4);
            let g = if same {
                ConvGeometry::tf_same(in_h, in_w, k, stride)
            } else {
                ConvGeometry::symmetric(in_h, in_w, k, stride, 1)
            };
            let mut rng = Rng::new(in_w as u64 + 17);
            let x = rng.signed_vec(in_h * in_w * cin);
            let y = rng.signed_vec(g.out_h * g.out_w * k * k * cin);
            let mut cols = vec![0.0; y.len()];
            im2col(&g, k, cin, &x, &mut cols, 0);
            let mut back = vec![0.0; x.len()];
            col2im(&g, k, cin, &y, &mut back, 0);
            let lhs: f64 = cols.iter().zip(&y).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }

    /// The patch matrix times the weights is the convolution, rows taken in two bands.
    #[test]
    fn im2col_times_weights_is_the_convolution() {
        for (in_h, in_w, stride, same) in [(7, 5, 2, true), (6, 6, 1, false), (2, 3, 2, true)] {
            let shape = ConvShape {
                k: 3,
                cin: 5,
                cout: 4,
            };
            let g = if same {
                ConvGeometry::tf_same(in_h, in_w, 3, stride)
            } else {
                ConvGeometry::symmetric(in_h, in_w, 3, stride, 1)
            };
            let mut rng = Rng::new(in_h as u64);
            let input = rng.signed_vec(in_h * in_w * shape.cin);
            let weights = rng.signed_vec(9 * shape.cin * shape.cout);
            let epi = Epilogue::new(None, f32::NEG_INFINITY, f32::INFINITY);
            let want = conv2d_reference(&g, shape, &input, &weights, &epi);
            let patch = 9 * shape.cin;
            let mut cols = vec![f32::NAN; g.out_h * g.out_w * patch];
            let split = g.out_h / 2 * g.out_w * patch;
            let (top, bottom) = cols.split_at_mut(split);
            im2col(&g, 3, shape.cin, &input, top, 0);
            im2col(&g, 3, shape.cin, &input, bottom, g.out_h / 2);
            let weights = &weights;
            let got: Vec<f32> = cols
                .chunks_exact(patch)
                .flat_map(|row| {
                    (0..shape.cout).map(move |co| {
                        row.iter()
                            .enumerate()
                            .map(|(i, x)| x * weights[i * shape.cout + co])
                            .sum()
                    })
                })
                .collect();
            assert_close(&got, &want, 1e-5, &format!("{in_h}x{in_w} s{stride}"));
        }
    }

    fn check(in_h: usize, in_w: usize, shape: ConvShape, stride: usize, same: bool) {
        let g = if same {
            ConvGeometry::tf_same(in_h, in_w, shape.k, stride)
        } else {
            ConvGeometry::symmetric(in_h, in_w, shape.k, stride, shape.k / 2)
        };
        let mut rng = Rng::new((in_h * 31 + in_w * 7 + shape.cout) as u64);
        let input = rng.signed_vec(in_h * in_w * shape.cin);
        let weights = rng.signed_vec(shape.k * shape.k * shape.cin * shape.cout);
        let bias = rng.signed_vec(shape.cout);
        let epi = Epilogue::new(Some(&bias), 0.0, 6.0);
        let expected = conv2d_reference(&g, shape, &input, &weights, &epi);
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; expected.len()];
            conv2d(isa, &g, shape, &input, &weights, &epi, &mut out, 0);
            let what = format!("{isa} {in_h}x{in_w} {shape:?} s{stride} same={same}");
            assert_close(&out, &expected, 1e-5, &what);
        }
    }

    #[test]
    fn every_isa_matches_reference() {
        for cout in [1, 7, 8, 15, 16, 17, 32, 33] {
            for stride in [1, 2] {
                for same in [true, false] {
                    for (h, w) in [(1, 1), (2, 3), (5, 5), (8, 7)] {
                        check(h, w, ConvShape { k: 3, cin: 3, cout }, stride, same);
                    }
                }
            }
        }
        check(
            9,
            9,
            ConvShape {
                k: 3,
                cin: 13,
                cout: 24,
            },
            1,
            true,
        );
        check(
            6,
            6,
            ConvShape {
                k: 1,
                cin: 5,
                cout: 9,
            },
            1,
            true,
        );
    }

    #[test]
    fn mobilenet_stem() {
        check(
            224,
            224,
            ConvShape {
                k: 3,
                cin: 3,
                cout: 32,
            },
            2,
            true,
        );
        check(
            33,
            33,
            ConvShape {
                k: 3,
                cin: 3,
                cout: 8,
            },
            2,
            false,
        );
    }

    #[test]
    fn bands_of_rows_equal_the_whole() {
        let g = ConvGeometry::tf_same(10, 10, 3, 2);
        let shape = ConvShape {
            k: 3,
            cin: 3,
            cout: 16,
        };
        let mut rng = Rng::new(9);
        let input = rng.signed_vec(300);
        let weights = rng.signed_vec(27 * 16);
        let epi = Epilogue::linear();
        let expected = conv2d_reference(&g, shape, &input, &weights, &epi);
        let isa = Isa::detect();
        let mut out = vec![0.0; expected.len()];
        for (i, band) in out.chunks_mut(g.out_w * 16).enumerate() {
            conv2d(isa, &g, shape, &input, &weights, &epi, band, i);
        }
        assert_close(&out, &expected, 1e-5, "bands");
    }
}
