//! The generic body of the depthwise kernel: one output row at a time, in the two loop orders
//! the module docs describe, compiled per instruction set through `simd_dispatch!`.

use super::K;
use crate::simd::SimdF32;
use crate::RowsCall;
use crate::{ConvGeometry, Epilogue};

/// Pixels of up to this many bytes (64 channels) are swept row by row one channel block at a
/// time with the taps in registers; wider pixels go channel block by channel block per group
/// of output columns (see [`group`]). Measured per vector on this machine's AVX-512: 32
/// channels 3.2 vs 4.3 ns, 512 channels 6.4 vs 4.9 ns.
const SWEEP_MAX_PIXEL_BYTES: usize = 256;

#[inline(always)]
pub(super) unsafe fn dw_rows<S: SimdF32, const P: usize, const Q: usize>(
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
