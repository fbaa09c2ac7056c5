//! Depthwise 3×3 convolution in NHWC, stride 1 or 2, any padding, vectorised over channels.
//!
//! Each instruction-set variant runs the same generic kernel, output row by output row, in one
//! of two orders. Pixels of few channels (≤ 64): for every block of `LANES` channels the nine
//! filter taps, bias and clamp bounds stay in registers while the row is swept. Wider pixels:
//! per group of output columns, all channel blocks in turn, so that the loads walk along each
//! pixel's channels (sweeping a row of 256+ channel pixels block by block reads lines 1–2 KB
//! apart, which share one or two L1 sets). Filter rows above or below the image get zero taps
//! and read a row inside, so every row runs the unrolled interior code; columns at the left
//! and right edges check their taps. The stride is a compile-time constant (1 or 2) in the
//! interior, which keeps the tap offsets few enough to stay in registers. No padded copy of
//! the input is made.

mod rows;

use rows::dw_rows;

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
    assert!(
        input.len() >= g.in_h * g.in_w * c,
        "input shorter than in_h·in_w·c"
    );
    run(isa, g, c, input, 0, weights, epi, output, row0);
}

/// [`dwconv3x3`] reading its input from a ring of `ring` rows, input row `y` being held at
/// `input[(y % ring)·in_w·c ..]`: how a pipeline of layers passes rows on without writing
/// whole activations. The caller keeps every input row the output rows need in the ring.
///
/// # Panics
///
/// As [`dwconv3x3`], or if `input` is shorter than `ring` rows or `ring` is 0.
#[allow(clippy::too_many_arguments)]
pub fn dwconv3x3_ring(
    isa: Isa,
    g: &ConvGeometry,
    c: usize,
    input: &[f32],
    ring: usize,
    weights: &[f32],
    epi: &Epilogue,
    output: &mut [f32],
    row0: usize,
) {
    assert!(ring > 0, "a ring of no rows");
    assert!(
        input.len() >= ring * g.in_w * c,
        "ring shorter than ring·in_w·c"
    );
    run(isa, g, c, input, ring, weights, epi, output, row0);
}

/// Checks the shapes shared by both entry points and dispatches.
#[allow(clippy::too_many_arguments)]
fn run(
    isa: Isa,
    g: &ConvGeometry,
    c: usize,
    input: &[f32],
    ring: usize,
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
    // Every output row's window holds at least one input row (the kernel reads one there).
    assert!(
        g.out_h == 0 || (g.out_h - 1) * g.stride < g.in_h + g.pad_top,
        "output rows past the input"
    );
    // Safety (of the variants): the slices are as long as the shapes say (checked above and
    // by the callers).
    let call = (g, (c, ring), input, weights, epi, output, row0, rows);
    crate::simd_dispatch!(isa, (call: crate::RowsCall<'_, (usize, usize)>) {
        avx512: dw_rows::<_, 8, 4>,
        avx2: dw_rows::<_, 4, 4>,
        neon: dw_rows::<_, 4, 4>,
        wasm: dw_rows::<_, 4, 4>,
        scalar: dw_rows::<_, 4, 4>,
    })
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
        let input = rng.signed_vec(in_h * in_w * c);
        let weights = rng.signed_vec(K * K * c);
        let bias = rng.signed_vec(c);
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
            // Row by row from a ring of 4 input rows filled with garbage first, holding only
            // the rows each output row needs, as a pipeline of layers feeds it.
            let ring = 4;
            let in_row = in_w * c;
            let mut slots = vec![f32::NAN; ring * in_row];
            let mut ringed = vec![f32::NAN; expected.len()];
            for (oy, out_row) in ringed.chunks_mut(row_len).enumerate() {
                let top = (oy * stride) as isize - g.pad_top as isize;
                for iy in top.max(0)..(top + K as isize).min(in_h as isize) {
                    let iy = iy as usize;
                    slots[(iy % ring) * in_row..][..in_row]
                        .copy_from_slice(&input[iy * in_row..][..in_row]);
                }
                dwconv3x3_ring(isa, &g, c, &slots, ring, &weights, &epi, out_row, oy);
            }
            assert_close(&ringed, &expected, 1e-5, &format!("{what} ring"));
        }
    }

    #[test]
    fn every_isa_matches_reference_on_edge_sizes() {
        // Channel counts around the vector widths (4, 8, 16) and α = 0.25's 8.
        // Above 64 channels the kernel takes its other loop order: 65, 80 and 129 cover it
        // with and without a partial last block.
        let channels = [1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 64, 65, 80, 129];
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
        check(28, 28, 256, 2, true);
        check(14, 14, 512, 2, false);
        check(7, 7, 1024, 1, false);
    }

    #[test]
    fn linear_epilogue_without_bias() {
        let g = ConvGeometry::tf_same(5, 5, K, 1);
        let c = 20;
        let mut rng = Rng::new(3);
        let input = rng.signed_vec(5 * 5 * c);
        let weights = rng.signed_vec(9 * c);
        let epi = Epilogue::linear();
        let expected = dwconv3x3_reference(&g, c, &input, &weights, &epi);
        for isa in Isa::available() {
            let mut out = vec![0.0; expected.len()];
            dwconv3x3(isa, &g, c, &input, &weights, &epi, &mut out, 0);
            assert_close(&out, &expected, 1e-5, isa.name());
        }
    }
}
