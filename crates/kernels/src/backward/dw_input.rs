//! The depthwise 3×3 convolution's input gradient, gathered: each input pixel sums the
//! outputs that read it, with the nine taps in registers, and is stored once.

use super::{load_n, store_n, K};
use crate::simd::SimdF32;
use crate::ConvGeometry;

/// `dx = ∂/∂x` of one image (see [`super::dwconv3x3_backward_input`]), at stride `ST` (0: any
/// stride, `g.stride`).
///
/// Rows outside, channels inside: the three rows of dy an input row reads stay in cache while
/// every vector of channels passes over them (channels outside streamed the image once per
/// vector: slower at 14×14×512). Output rows above and below dy read a row of zeros. The
/// interior columns load each dy column once: at stride 1 a window of three columns per filter
/// row slides along the row, at stride 2 pairs of input columns share output columns o − 1 and
/// o; only the one or two edge columns a row look their sources up in a table. (Scattering each
/// output to its nine inputs was a load and a store of dx per multiply-add; the table read
/// for every column and tap took 40% more time on CIFAR's stride-1 layers, twice as much at
/// stride 2.)
///
/// # Safety
///
/// `dy` holds `out_h·out_w·c` values, `w` `9·c`, `dx` `in_h·in_w·c`; the instruction set of
/// `S` is available; `ST` is 0 or `g.stride`.
#[inline(always)]
pub(super) unsafe fn input<S: SimdF32, const ST: usize>(
    s: S,
    g: &ConvGeometry,
    c: usize,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) {
    let stride = if ST == 0 { g.stride } else { ST };
    // The output (row or column) that reads input i through tap k, if any.
    let source = |i: usize, k: usize, pad: usize, size: usize| {
        let t = (i + pad).checked_sub(k)?;
        (t % stride == 0 && t / stride < size).then_some(t / stride)
    };
    let zeros = vec![0.0f32; g.out_w * c];
    // Stride 1: input column ix reads output columns ix + pad − 2 ..= ix + pad.
    // Stride 2: columns 2o − pad and 2o − pad + 1 read output column o (taps 0 and 1), the
    // first also o − 1 (tap 2); a..b holds the pairs whose o − 1 and o are both outputs.
    let (a, b) = match stride {
        1 => {
            let a = 2usize.saturating_sub(g.pad_left).min(g.in_w);
            (a, g.out_w.saturating_sub(g.pad_left).clamp(a, g.in_w))
        }
        2 if g.in_w + g.pad_left >= 2 => {
            let o_lo = g.pad_left.div_ceil(2).max(1);
            let o_end = g.out_w.min((g.in_w + g.pad_left - 2) / 2 + 1);
            match o_end > o_lo {
                true => (2 * o_lo - g.pad_left, 2 * o_end - g.pad_left),
                false => (0, 0),
            }
        }
        _ => (0, 0),
    };
    // The columns outside a..b and the output column each of their taps reads.
    let edge: Vec<(usize, [Option<usize>; K])> = (0..a)
        .chain(b..g.in_w)
        .map(|ix| (ix, [0, 1, 2].map(|kx| source(ix, kx, g.pad_left, g.out_w))))
        .collect();
    // Safety: every dy read is of an output row (or the zero row) and an output column, every
    // dx write of an input pixel; channel runs stop at c.
    unsafe {
        for iy in 0..g.in_h {
            let rows = [0, 1, 2].map(|ky| match source(iy, ky, g.pad_top, g.out_h) {
                Some(oy) => dy.as_ptr().add(oy * g.out_w * c),
                None => zeros.as_ptr(),
            });
            let out_row = dx.as_mut_ptr().add(iy * g.in_w * c);
            for c0 in (0..c).step_by(S::LANES) {
                let n = (c - c0).min(S::LANES);
                let mut taps = [s.zero(); K * K];
                for (t, v) in taps.iter_mut().enumerate() {
                    *v = load_n(s, n, w.as_ptr().add(t * c + c0));
                }
                let rows = rows.map(|r| r.add(c0));
                // Three partial sums, one per filter row, for shorter dependency chains.
                for (ix, from) in edge.iter() {
                    let mut r = [s.zero(); K];
                    for kx in 0..K {
                        if let Some(ox) = from[kx] {
                            for (ky, row) in rows.iter().enumerate() {
                                let d = load_n(s, n, row.add(ox * c));
                                r[ky] = s.fma(d, taps[ky * K + kx], r[ky]);
                            }
                        }
                    }
                    store_n(
                        s,
                        n,
                        out_row.add(*ix * c + c0),
                        s.add(s.add(r[0], r[1]), r[2]),
                    );
                }
                if stride == 2 {
                    // Pairs of columns; `prev[ky]` is output column o − 1 of filter row ky.
                    let mut prev = [s.zero(); K];
                    if a < b {
                        let o = (a + g.pad_left) / 2;
                        for (ky, row) in rows.iter().enumerate() {
                            prev[ky] = load_n(s, n, row.add((o - 1) * c));
                        }
                    }
                    for ix in (a..b).step_by(2) {
                        let o = (ix + g.pad_left) / 2;
                        let (mut even, mut odd) = ([s.zero(); K], [s.zero(); K]);
                        for (ky, row) in rows.iter().enumerate() {
                            let cur = load_n(s, n, row.add(o * c));
                            even[ky] = s.fma(cur, taps[ky * K], even[ky]);
                            even[ky] = s.fma(prev[ky], taps[ky * K + 2], even[ky]);
                            odd[ky] = s.fma(cur, taps[ky * K + 1], odd[ky]);
                            prev[ky] = cur;
                        }
                        // (Not a closure: it would not inherit the caller's target features.)
                        let even = s.add(s.add(even[0], even[1]), even[2]);
                        let odd = s.add(s.add(odd[0], odd[1]), odd[2]);
                        store_n(s, n, out_row.add(ix * c + c0), even);
                        store_n(s, n, out_row.add((ix + 1) * c + c0), odd);
                    }
                    continue;
                }
                // A window of the three dy columns each filter row reads, sliding by one:
                // each column loaded once (win[ky][j] is column ix + pad − 2 + j).
                let mut win = [[s.zero(); K]; K];
                if a < b {
                    let first = (a + g.pad_left - 2) * c;
                    for (ky, row) in rows.iter().enumerate() {
                        win[ky][1] = load_n(s, n, row.add(first));
                        win[ky][2] = load_n(s, n, row.add(first + c));
                    }
                }
                for ix in a..b {
                    let at = (ix + g.pad_left) * c;
                    let mut r = [s.zero(); K];
                    for (ky, row) in rows.iter().enumerate() {
                        win[ky] = [win[ky][1], win[ky][2], load_n(s, n, row.add(at))];
                        for kx in 0..K {
                            r[ky] = s.fma(win[ky][2 - kx], taps[ky * K + kx], r[ky]);
                        }
                    }
                    store_n(
                        s,
                        n,
                        out_row.add(ix * c + c0),
                        s.add(s.add(r[0], r[1]), r[2]),
                    );
                }
            }
        }
    }
}
