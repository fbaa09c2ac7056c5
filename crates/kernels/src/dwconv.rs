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

use crate::simd::SimdF32;
use crate::RowsCall;
use crate::{ConvGeometry, Epilogue, Isa};

/// Kernel size (3×3).
const K: usize = 3;

/// Pixels of up to this many bytes (64 channels) are swept row by row one channel block at a
/// time with the taps in registers; wider pixels go channel block by channel block per group
/// of output columns (see [`group`]). Measured per vector on this machine's AVX-512: 32
/// channels 3.2 vs 4.3 ns, 512 channels 6.4 vs 4.9 ns.
const SWEEP_MAX_PIXEL_BYTES: usize = 256;

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
    crate::simd_dispatch!(isa, (call: RowsCall<'_, (usize, usize)>) {
        avx512: dw_rows::<_, 8, 4>,
        avx2: dw_rows::<_, 4, 4>,
        neon: dw_rows::<_, 4, 4>,
        scalar: dw_rows::<_, 4, 4>,
    })
}

#[inline(always)]
unsafe fn dw_rows<S: SimdF32, const P: usize, const Q: usize>(
    s: S,
    call: RowsCall<'_, (usize, usize)>,
) {
    let (g, (c, ring), input, weights, epi, output, row0, rows) = call;
    // Safety: the caller upholds SimdF32's contract and passed slices as long as the
    // geometry says (input: the whole image, or `ring` rows holding input row y at y % ring);
    // every pointer below stays inside them.
    unsafe {
        let (in_h, stride) = (g.in_h as isize, g.stride);
        // Output columns whose three input columns are all inside the image.
        let x_lo = g.pad_left.div_ceil(stride).min(g.out_w);
        let x_hi = if g.in_w + g.pad_left >= K {
            ((g.in_w + g.pad_left - K) / stride + 1).clamp(x_lo, g.out_w)
        } else {
            x_lo
        };
        let inp = input.as_ptr();
        let row_len = g.in_w * c;
        for r in 0..rows {
            let oy = row0 + r;
            let iy0 = (oy * stride) as isize - g.pad_top as isize;
            let ky_lo = (-iy0).max(0) as usize;
            let ky_hi = (in_h - iy0).clamp(0, K as isize) as usize;
            // Filter rows outside the image read a row inside, with zero taps.
            let mut rowp = [inp; K];
            for (ky, p) in rowp.iter_mut().enumerate() {
                let iy = (iy0 + ky.clamp(ky_lo, ky_hi - 1) as isize) as usize;
                *p = inp.add(if ring == 0 { iy } else { iy % ring } * row_len);
            }
            let out_row = output.as_mut_ptr().add(r * g.out_w * c);
            if c * 4 <= SWEEP_MAX_PIXEL_BYTES {
                // Few channels: sweep the row block by block, the nine taps in registers.
                let lanes = S::LANES;
                let mut cb = 0;
                while cb < c {
                    let n = (c - cb).min(lanes);
                    let block = Block {
                        c,
                        cb,
                        n,
                        ky_lo,
                        ky_hi,
                        rowp,
                        in_w: g.in_w as isize,
                    };
                    let (w, o) = (weights, out_row);
                    match (n == lanes, stride) {
                        (true, 1) => dw_block::<S, true, P, 1>(s, g, &block, w, epi, o, x_lo, x_hi),
                        (true, 2) => dw_block::<S, true, P, 2>(s, g, &block, w, epi, o, x_lo, x_hi),
                        (true, _) => dw_block::<S, true, P, 0>(s, g, &block, w, epi, o, x_lo, x_hi),
                        (false, _) => {
                            dw_block::<S, false, P, 0>(s, g, &block, w, epi, o, x_lo, x_hi)
                        }
                    }
                    cb += lanes;
                }
                continue;
            }
            let row = Row {
                c,
                stride,
                pad_left: g.pad_left,
                in_w: g.in_w,
                ky_lo,
                ky_hi,
                rowp,
                weights: weights.as_ptr(),
                bias: epi.bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
                min: epi.min,
                max: epi.max,
                out: out_row,
            };
            for ox in 0..x_lo {
                group::<S, 1, true>(s, &row, ox);
            }
            let mut ox = x_lo;
            while ox + Q <= x_hi {
                group::<S, Q, false>(s, &row, ox);
                ox += Q;
            }
            if Q > 4 && ox + 4 <= x_hi {
                group::<S, 4, false>(s, &row, ox);
                ox += 4;
            }
            if ox + 2 <= x_hi {
                group::<S, 2, false>(s, &row, ox);
                ox += 2;
            }
            if ox < x_hi {
                group::<S, 1, false>(s, &row, ox);
            }
            for ox in x_hi.max(x_lo)..g.out_w {
                group::<S, 1, true>(s, &row, ox);
            }
        }
    }
}

/// One output row being computed.
struct Row {
    c: usize,
    stride: usize,
    pad_left: usize,
    in_w: usize,
    ky_lo: usize,
    ky_hi: usize,
    /// Input rows of the three filter rows (rows outside the image point inside).
    rowp: [*const f32; K],
    weights: *const f32,
    /// Null without bias.
    bias: *const f32,
    min: f32,
    max: f32,
    /// The output row.
    out: *mut f32,
}

/// `Q` output columns from `ox`, all channels: channel blocks innermost, so that the loads
/// walk along each input pixel's channels. (Sweeping a row block by block instead reads the
/// pixels at a stride of `4·c` bytes, a power of two from c = 256 on, and those lines all fall
/// into one or two L1 sets, which costs a third of the layer's time.) `EDGE`: the columns
/// reach outside the image and every tap is checked.
#[inline(always)]
unsafe fn group<S: SimdF32, const Q: usize, const EDGE: bool>(s: S, r: &Row, ox: usize) {
    match r.stride {
        // Safety: forwarded.
        1 => unsafe { group_st::<S, Q, EDGE, 1>(s, r, ox) },
        2 => unsafe { group_st::<S, Q, EDGE, 2>(s, r, ox) },
        _ => unsafe { group_st::<S, Q, EDGE, 0>(s, r, ox) },
    }
}

#[inline(always)]
unsafe fn group_st<S: SimdF32, const Q: usize, const EDGE: bool, const ST: usize>(
    s: S,
    r: &Row,
    ox: usize,
) {
    // Safety: forwarded from dw_rows.
    unsafe {
        let mut cb = 0;
        while cb + S::LANES <= r.c {
            cols::<S, Q, EDGE, true, ST>(s, r, ox, cb, S::LANES);
            cb += S::LANES;
        }
        if cb < r.c {
            cols::<S, Q, EDGE, false, ST>(s, r, ox, cb, r.c - cb);
        }
    }
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

/// `Q` output columns from `ox` of channels `cb .. cb + n`.
#[inline(always)]
unsafe fn cols<S: SimdF32, const Q: usize, const EDGE: bool, const FULL: bool, const ST: usize>(
    s: S,
    r: &Row,
    ox: usize,
    cb: usize,
    n: usize,
) {
    // Safety: dw_rows computed the interior bounds, so unchecked taps are inside the rows;
    // checked taps are skipped when outside.
    unsafe {
        let c = r.c;
        let stride = if ST > 0 { ST } else { r.stride };
        let mut w = [[s.zero(); K]; K];
        for (ky, wrow) in w.iter_mut().enumerate() {
            if ky >= r.ky_lo && ky < r.ky_hi {
                for (kx, tap) in wrow.iter_mut().enumerate() {
                    *tap = ld::<S, FULL>(s, r.weights.add((ky * K + kx) * c + cb), n);
                }
            }
        }
        let bias = if r.bias.is_null() {
            s.zero()
        } else {
            ld::<S, FULL>(s, r.bias.add(cb), n)
        };
        let ix0 = (ox * stride) as isize - r.pad_left as isize;
        let mut acc = [bias; Q];
        for (ky, wrow) in w.iter().enumerate() {
            let q = r.rowp[ky].add(cb);
            for (kx, &wv) in wrow.iter().enumerate() {
                for (p, a) in acc.iter_mut().enumerate() {
                    let ix = ix0 + (p * stride + kx) as isize;
                    if EDGE && (ix < 0 || ix >= r.in_w as isize) {
                        continue;
                    }
                    let x = ld::<S, FULL>(s, q.offset(ix * c as isize), n);
                    *a = s.fma(x, wv, *a);
                }
            }
        }
        let (lo, hi) = (s.splat(r.min), s.splat(r.max));
        for (p, &a) in acc.iter().enumerate() {
            let v = s.min(s.max(a, lo), hi);
            let dst = r.out.add((ox + p) * c + cb);
            if FULL {
                s.store(dst, v)
            } else {
                s.store_partial(dst, v, n)
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
    /// Input rows of the three filter rows (valid from `ky_lo` to `ky_hi`).
    rowp: [*const f32; K],
    in_w: isize,
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_block<S: SimdF32, const FULL: bool, const P: usize, const ST: usize>(
    s: S,
    g: &ConvGeometry,
    b: &Block,
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
        // Filter rows that fall outside the image (top and bottom output rows) get zero taps
        // and read a row that is inside (dw_rows points them there), so that every row runs
        // the unrolled code below; x · 0 adds nothing for the finite activations of a network.
        let mut w = [[s.zero(); K]; K];
        for (ky, row) in w.iter_mut().enumerate().take(b.ky_hi).skip(b.ky_lo) {
            for (kx, tap) in row.iter_mut().enumerate() {
                *tap = ld::<S, FULL>(s, wp.add((ky * K + kx) * c), n);
            }
        }
        let bias = match epi.bias {
            Some(bias) => ld::<S, FULL>(s, bias.as_ptr().add(cb), n),
            None => s.zero(),
        };
        let (lo, hi) = (s.splat(epi.min), s.splat(epi.max));
        // The stride as a constant where known (ST > 0): the tap offsets then are a few
        // multiples of c the compiler keeps in registers.
        let stride = if ST > 0 { ST } else { g.stride };
        let pad_left = g.pad_left as isize;

        // Closures would not inherit the target features of the #[target_feature] caller, so
        // the intrinsics in them would become calls; these helpers are macros instead.
        // A column at the left or right edge, checking every tap against the image bounds.
        macro_rules! edge {
            ($ox:expr) => {{
                let ix0 = ($ox * stride) as isize - pad_left;
                let mut acc = bias;
                for ky in 0..K {
                    for kx in 0..K {
                        let ix = ix0 + kx as isize;
                        if ix >= 0 && ix < b.in_w {
                            let p = b.rowp[ky].add(ix as usize * c + cb);
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

        // Q output columns whose nine taps are all inside the image: unrolled, Q accumulator
        // chains hiding the FMA latency (one chain of nine dependent FMAs is latency-bound).
        let [r0, r1, r2] = b.rowp;
        let rows = [r0.add(cb), r1.add(cb), r2.add(cb)];
        macro_rules! interior {
            ($ox:expr, $q:expr) => {{
                let x0 = (($ox * stride) as isize - pad_left) as usize * c;
                let mut acc = [bias; $q];
                for (ky, wrow) in w.iter().enumerate() {
                    let q = rows[ky].add(x0);
                    for (kx, &wv) in wrow.iter().enumerate() {
                        let off = kx * c;
                        for (p, a) in acc.iter_mut().enumerate() {
                            let x = ld::<S, FULL>(s, q.add(p * stride * c + off), n);
                            *a = s.fma(x, wv, *a);
                        }
                    }
                }
                for (p, &a) in acc.iter().enumerate() {
                    store!($ox + p, a);
                }
            }};
        }

        for ox in 0..x_lo {
            store!(ox, edge!(ox));
        }
        let mut ox = x_lo;
        while ox + P <= x_hi {
            interior!(ox, P);
            ox += P;
        }
        if P > 4 && ox + 4 <= x_hi {
            interior!(ox, 4);
            ox += 4;
        }
        if ox + 2 <= x_hi {
            interior!(ox, 2);
            ox += 2;
        }
        if ox < x_hi {
            interior!(ox, 1);
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
