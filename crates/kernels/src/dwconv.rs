//! Depthwise 3×3 convolution in NHWC, stride 1 or 2, any padding, vectorised over channels.
//!
//! Each instruction-set variant runs the same generic kernel: for every output row and every
//! block of `LANES` channels it keeps the block's nine filter taps, bias and clamp bounds in
//! registers and sweeps the row. Padding is handled by splitting each row into a left edge,
//! an interior where all nine taps are inside the image, and a right edge; rows at the top
//! and bottom use only their valid filter rows. No padded copy of the input is made.

use crate::simd::{Scalar, SimdF32};
use crate::{ConvGeometry, Epilogue, Isa};

/// Kernel size (3×3).
const K: usize = 3;

/// Depthwise 3×3 convolution of one image, writing output rows `row0 .. row0 + n`.
///
/// - `input`: `[in_h, in_w, c]`
/// - `weights`: `[3, 3, c]` (TF's `[3, 3, c, 1]` with the last axis dropped)
/// - `output`: rows `row0 ..` of `[out_h, out_w, c]`, `n = output.len() / (out_w · c)` of them
///
/// Splitting `output` into row bands is how callers run it on several threads.
///
/// # Panics
///
/// If a slice is shorter than its shape says, or the band reaches past `out_h`.
#[allow(clippy::too_many_arguments)] // the geometry of a conv is this many numbers
pub fn dwconv3x3(
    isa: Isa,
    g: &ConvGeometry,
    c: usize,
    input: &[f32],
    weights: &[f32],
    epi: &Epilogue,
    output: &mut [f32],
    row0: usize,
) {
    let row_len = g.out_w * c;
    assert!(
        row_len > 0 && output.len().is_multiple_of(row_len),
        "output is not whole rows"
    );
    let rows = output.len() / row_len;
    assert!(row0 + rows <= g.out_h, "output rows past out_h");
    assert!(
        input.len() >= g.in_h * g.in_w * c,
        "input shorter than in_h·in_w·c"
    );
    assert!(weights.len() >= K * K * c, "weights shorter than 3·3·c");
    if let Some(b) = epi.bias {
        assert!(b.len() >= c, "bias shorter than c");
    }
    assert!(
        !epi.accumulate,
        "accumulating epilogues are only supported by gemm"
    );
    assert!(
        g.pad_top < K && g.pad_left < K,
        "padding larger than the kernel"
    );
    // Safety: the slices are as long as the shapes say (checked above); each variant runs
    // only where `isa` is supported, which the dispatcher checked at detection.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if isa.is_supported() => {
                dw_avx512(g, c, input, weights, epi, output, row0, rows)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma if isa.is_supported() => {
                dw_avx2(g, c, input, weights, epi, output, row0, rows)
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => dw_rows::<_, 4>(
                crate::simd::Neon,
                g,
                c,
                input,
                weights,
                epi,
                output,
                row0,
                rows,
            ),
            _ => dw_rows::<_, 4>(Scalar, g, c, input, weights, epi, output, row0, rows),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx512(
    g: &ConvGeometry,
    c: usize,
    input: &[f32],
    weights: &[f32],
    epi: &Epilogue,
    output: &mut [f32],
    row0: usize,
    rows: usize,
) {
    // Safety: AVX-512 F is enabled on this function and the caller checked the CPU has it.
    unsafe {
        dw_rows::<_, 8>(
            crate::simd::Avx512,
            g,
            c,
            input,
            weights,
            epi,
            output,
            row0,
            rows,
        )
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx2(
    g: &ConvGeometry,
    c: usize,
    input: &[f32],
    weights: &[f32],
    epi: &Epilogue,
    output: &mut [f32],
    row0: usize,
    rows: usize,
) {
    // Safety: AVX2 and FMA are enabled on this function and the caller checked the CPU.
    unsafe {
        dw_rows::<_, 4>(
            crate::simd::Avx2Fma,
            g,
            c,
            input,
            weights,
            epi,
            output,
            row0,
            rows,
        )
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_rows<S: SimdF32, const P: usize>(
    s: S,
    g: &ConvGeometry,
    c: usize,
    input: &[f32],
    weights: &[f32],
    epi: &Epilogue,
    output: &mut [f32],
    row0: usize,
    rows: usize,
) {
    // Safety: the caller upholds SimdF32's contract and passed slices as long as the
    // geometry says; every pointer below stays inside them.
    unsafe {
        let lanes = S::LANES;
        let (in_h, in_w) = (g.in_h as isize, g.in_w as isize);
        let stride = g.stride;
        // Output columns whose three input columns are all inside the image.
        let x_lo = g.pad_left.div_ceil(stride).min(g.out_w);
        let x_hi = if g.in_w + g.pad_left >= K {
            ((g.in_w + g.pad_left - K) / stride + 1).clamp(x_lo, g.out_w)
        } else {
            x_lo
        };
        let inp = input.as_ptr();
        let out = output.as_mut_ptr();
        for r in 0..rows {
            let oy = row0 + r;
            let iy0 = (oy * stride) as isize - g.pad_top as isize;
            let ky_lo = (-iy0).max(0) as usize;
            let ky_hi = (in_h - iy0).clamp(0, K as isize) as usize;
            let out_row = out.add(r * g.out_w * c);
            let mut cb = 0;
            while cb < c {
                let n = (c - cb).min(lanes);
                let block = Block {
                    c,
                    cb,
                    n,
                    ky_lo,
                    ky_hi,
                    iy0,
                    in_w,
                };
                if n == lanes {
                    dw_block::<S, true, P>(s, g, &block, inp, weights, epi, out_row, x_lo, x_hi);
                } else {
                    dw_block::<S, false, P>(s, g, &block, inp, weights, epi, out_row, x_lo, x_hi);
                }
                cb += lanes;
            }
        }
    }
}

/// One channel block of one output row.
struct Block {
    c: usize,
    cb: usize,
    n: usize,
    ky_lo: usize,
    ky_hi: usize,
    iy0: isize,
    in_w: isize,
}

#[inline(always)]
unsafe fn ld<S: SimdF32, const FULL: bool>(s: S, p: *const f32, n: usize) -> S::V {
    // Safety: the caller guarantees p is valid for LANES (FULL) or n values.
    unsafe {
        if FULL {
            s.load(p)
        } else {
            s.load_partial(p, n)
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_block<S: SimdF32, const FULL: bool, const P: usize>(
    s: S,
    g: &ConvGeometry,
    b: &Block,
    inp: *const f32,
    weights: &[f32],
    epi: &Epilogue,
    out_row: *mut f32,
    x_lo: usize,
    x_hi: usize,
) {
    // Safety: pointers stay inside input/weights/output as dw_rows computed the
    // interior bounds; the caller upholds SimdF32's contract.
    unsafe {
        let (c, cb, n) = (b.c, b.cb, b.n);
        let wp = weights.as_ptr().add(cb);
        let mut w = [[s.zero(); K]; K];
        for (ky, row) in w.iter_mut().enumerate() {
            for (kx, tap) in row.iter_mut().enumerate() {
                *tap = ld::<S, FULL>(s, wp.add((ky * K + kx) * c), n);
            }
        }
        let bias = match epi.bias {
            Some(bias) => ld::<S, FULL>(s, bias.as_ptr().add(cb), n),
            None => s.zero(),
        };
        let (lo, hi) = (s.splat(epi.min), s.splat(epi.max));
        let stride = g.stride;
        let pad_left = g.pad_left as isize;
        let row_stride = b.in_w as usize * c;
        let full_rows = b.ky_lo == 0 && b.ky_hi == K;

        // Closures would not inherit the target features of the #[target_feature] caller, so
        // the intrinsics in them would become calls; these helpers are macros instead.
        // Any output column, checking every tap against the image bounds.
        macro_rules! edge {
            ($ox:expr) => {{
                let ix0 = ($ox * stride) as isize - pad_left;
                let mut acc = bias;
                for ky in b.ky_lo..b.ky_hi {
                    let iy = (b.iy0 + ky as isize) as usize;
                    for kx in 0..K {
                        let ix = ix0 + kx as isize;
                        if ix >= 0 && ix < b.in_w {
                            let p = inp.add(iy * row_stride + ix as usize * c + cb);
                            acc = s.fma(ld::<S, FULL>(s, p, n), w[ky][kx], acc);
                        }
                    }
                }
                acc
            }};
        }
        macro_rules! store {
            ($ox:expr, $acc:expr) => {{
                let v = s.min(s.max($acc, lo), hi);
                let p = out_row.add($ox * c + cb);
                if FULL {
                    s.store(p, v)
                } else {
                    s.store_partial(p, v, n)
                }
            }};
        }

        for ox in 0..x_lo {
            store!(ox, edge!(ox));
        }
        if full_rows {
            // Interior of a row with all three filter rows inside the image: nine taps
            // unrolled, P output columns at a time so that P accumulator chains hide the FMA
            // latency (one chain of nine dependent FMAs would be latency-bound).
            let base = inp.add(b.iy0 as usize * row_stride + cb);
            let mut ox = x_lo;
            while ox + P <= x_hi {
                let q = base.add(((ox * stride) as isize - pad_left) as usize * c);
                let mut acc = [bias; P];
                for (ky, wrow) in w.iter().enumerate() {
                    for (kx, &wv) in wrow.iter().enumerate() {
                        let off = ky * row_stride + kx * c;
                        for (p, a) in acc.iter_mut().enumerate() {
                            let x = ld::<S, FULL>(s, q.add(p * stride * c + off), n);
                            *a = s.fma(x, wv, *a);
                        }
                    }
                }
                for (p, &a) in acc.iter().enumerate() {
                    store!(ox + p, a);
                }
                ox += P;
            }
            while ox < x_hi {
                let q = base.add(((ox * stride) as isize - pad_left) as usize * c);
                let mut acc = bias;
                for (ky, wrow) in w.iter().enumerate() {
                    for (kx, &wv) in wrow.iter().enumerate() {
                        let x = ld::<S, FULL>(s, q.add(ky * row_stride + kx * c), n);
                        acc = s.fma(x, wv, acc);
                    }
                }
                store!(ox, acc);
                ox += 1;
            }
        } else {
            for ox in x_lo..x_hi {
                store!(ox, edge!(ox));
            }
        }
        for ox in x_hi.max(x_lo)..g.out_w {
            store!(ox, edge!(ox));
        }
    }
}

/// The obviously-correct definition: direct loops, bounds checked per tap.
/// Tests compare every variant of [`dwconv3x3`] with it.
pub fn dwconv3x3_reference(
    g: &ConvGeometry,
    c: usize,
    input: &[f32],
    weights: &[f32],
    epi: &Epilogue,
) -> Vec<f32> {
    let mut out = vec![0.0; g.out_h * g.out_w * c];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            for ch in 0..c {
                let mut acc = 0.0f32;
                for ky in 0..K {
                    for kx in 0..K {
                        let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
                        let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
                        if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                            continue;
                        }
                        let x = input[(iy as usize * g.in_w + ix as usize) * c + ch];
                        acc += x * weights[(ky * K + kx) * c + ch];
                    }
                }
                out[(oy * g.out_w + ox) * c + ch] = epi.apply(ch, acc);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, Rng};

    fn check(in_h: usize, in_w: usize, c: usize, stride: usize, same: bool) {
        let g = if same {
            ConvGeometry::tf_same(in_h, in_w, K, stride)
        } else {
            ConvGeometry::symmetric(in_h, in_w, K, stride, 1)
        };
        let mut rng = Rng::new((in_h * 1000 + in_w * 10 + c + stride) as u64);
        let input = rng.vec(in_h * in_w * c);
        let weights = rng.vec(K * K * c);
        let bias = rng.vec(c);
        let epi = Epilogue::new(Some(&bias), -0.5, 1.5);
        let expected = dwconv3x3_reference(&g, c, &input, &weights, &epi);
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; expected.len()];
            dwconv3x3(isa, &g, c, &input, &weights, &epi, &mut out, 0);
            let what = format!("{isa} {in_h}x{in_w}x{c} s{stride} same={same}");
            assert_close(&out, &expected, 1e-5, &what);
            // The same output computed in bands of rows, as threads do.
            let row_len = g.out_w * c;
            let mut banded = vec![f32::NAN; expected.len()];
            for (i, band) in banded.chunks_mut(2 * row_len).enumerate() {
                dwconv3x3(isa, &g, c, &input, &weights, &epi, band, 2 * i);
            }
            assert_close(&banded, &expected, 1e-5, &format!("{what} banded"));
        }
    }

    #[test]
    fn every_isa_matches_reference_on_edge_sizes() {
        // Channel counts around the vector widths (4, 8, 16) and α = 0.25's 8.
        let channels = [1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48];
        for &c in &channels {
            for stride in [1, 2] {
                for same in [true, false] {
                    for (h, w) in [(1, 1), (2, 2), (3, 3), (4, 5), (7, 7), (8, 6), (13, 11)] {
                        check(h, w, c, stride, same);
                    }
                }
            }
        }
    }

    #[test]
    fn mobilenet_shapes() {
        check(112, 112, 32, 1, true);
        check(112, 112, 64, 2, true);
        check(14, 14, 512, 1, true);
        check(7, 7, 1024, 1, false);
    }

    #[test]
    fn linear_epilogue_without_bias() {
        let g = ConvGeometry::tf_same(5, 5, K, 1);
        let c = 20;
        let mut rng = Rng::new(3);
        let input = rng.vec(5 * 5 * c);
        let weights = rng.vec(9 * c);
        let epi = Epilogue::linear();
        let expected = dwconv3x3_reference(&g, c, &input, &weights, &epi);
        for isa in Isa::available() {
            let mut out = vec![0.0; expected.len()];
            dwconv3x3(isa, &g, c, &input, &weights, &epi, &mut out, 0);
            assert_close(&out, &expected, 1e-5, isa.name());
        }
    }
}
