//! The GEMM microkernel: blocks of packed B that fit in L2, tiles of MR rows of A, an
//! `MR × NR` tile of C in registers with the epilogue applied before the store. One generic
//! body over [`SimdF32`], compiled per instruction set by [`crate::simd_dispatch!`].

use crate::simd::SimdF32;
use crate::Isa;

/// Runs the GEMM for the instruction set B was packed for.
///
/// # Safety
///
/// The pointers in `args` must cover the shapes it states.
pub(super) unsafe fn dispatch(isa: Isa, args: &Args) {
    if args.bf16 {
        // Safety: bf16 packings exist only where the CPU runs them (PackedB::to_bf16,
        // PackedB::new_bf16).
        return unsafe { super::bf16::gemm(args) };
    }
    crate::simd_dispatch!(isa, (args: &Args) {
        avx512: gemm_any::<_, 12>,
        avx2: gemm_any::<_, 6>,
        neon: gemm_any::<_, 8>,
        // 4 rows, not 6 as on AVX2's 16 registers too: V8 spills at 6 (1.0-224 in Chromium
        // 156 on Zen 3: 75 ms at MR 6, 53 at 4, 55 at 3; BENCHMARKS.md).
        wasm: gemm_any::<_, 4>,
        scalar: gemm_any::<_, 4>,
    })
}

/// Raw arguments of one GEMM call, checked by [`super::gemm`].
pub(super) struct Args {
    pub m: usize,
    pub k: usize,
    /// One past the last column computed.
    pub n: usize,
    /// First panel computed; C points at its first column.
    pub p0: usize,
    pub a: *const f32,
    pub lda: usize,
    /// A is given transposed: `a` holds Aᵀ (`[k, m]`, row stride `lda`).
    pub a_trans: bool,
    pub b: *const f32,
    pub c: *mut f32,
    pub ldc: usize,
    pub bias: *const f32,
    pub min: f32,
    pub max: f32,
    pub accumulate: bool,
    /// Null, or per-column running sums `[Σc, Σc²]` (f64, each `panels · nr` long, indexed by
    /// column) to which every tile adds its columns' sums over its rows.
    pub moments: *mut f64,
    /// B holds bf16 pairs ([`super::bf16`]).
    pub bf16: bool,
}

/// Bytes of packed B in one block of panels: the block stays in L2 while every row tile of A
/// passes over it. Measured on the 1.0-224 shapes (AVX-512, 2 MB L2): 256 KB beat 1 MB (which
/// lost 8% at K = 1024) and one panel per block (which re-reads A per panel and lost 30% at
/// K = 32). Packing A tiles k-major was tried too and lost up to 15%: the copy cost more than
/// the sequential reads saved.
const B_BLOCK_BYTES: usize = 256 << 10;

/// How many k steps ahead the microkernel prefetches B (a step is 12 cycles at MR = 12;
/// 16 steps cover an L3 access).
const PREFETCH_K: usize = 16;

/// The loops below for A as given or transposed (one compiled body each).
#[inline(always)]
unsafe fn gemm_any<S: SimdF32, const MR: usize>(s: S, x: &Args) {
    // Safety: forwarded.
    unsafe {
        match x.a_trans {
            false => gemm_panels::<S, MR, false>(s, x),
            true => gemm_panels::<S, MR, true>(s, x),
        }
    }
}

/// Loops: blocks of B panels that fit in L2 → tiles of MR rows of A → panels of the block.
/// `TA`: A is read transposed (element `(i, kk)` at `kk·lda + i`).
#[inline(always)]
unsafe fn gemm_panels<S: SimdF32, const MR: usize, const TA: bool>(s: S, x: &Args) {
    let nr = 2 * S::LANES;
    let panels = x.n.div_ceil(nr);
    let block = (B_BLOCK_BYTES / (x.k * nr * 4).max(1)).max(1);
    // Safety: tiles stay inside the m×n of C and the m×k of A; panel p starts at p·k·nr in
    // the packed data, which holds `panels` of them.
    unsafe {
        let mut p_start = x.p0;
        while p_start < panels {
            let p_end = (p_start + block).min(panels);
            let mut i = 0;
            while i < x.m {
                let rows = tile_rows(x.m - i, MR);
                let a = if TA { x.a.add(i) } else { x.a.add(i * x.lda) };
                for p in p_start..p_end {
                    let cols = (x.n - p * nr).min(nr);
                    let bp = x.b.add(p * x.k * nr);
                    let bias = if x.bias.is_null() {
                        x.bias
                    } else {
                        x.bias.add(p * nr)
                    };
                    let c = x.c.add(i * x.ldc + (p - x.p0) * nr);
                    let moments = if x.moments.is_null() {
                        x.moments
                    } else {
                        x.moments.add(p * nr)
                    };
                    let t = Tile {
                        a,
                        bp,
                        c,
                        cols,
                        bias,
                        moments,
                        squares: panels * nr,
                    };
                    if rows == MR {
                        tile::<S, MR, TA>(s, x, &t);
                    } else {
                        tail_tile::<S, MR, TA>(s, x, &t, rows);
                    }
                }
                i += rows;
            }
            p_start = p_end;
        }
    }
}

/// Rows of the next tile when `left` rows remain, at most `mr`. A last tile of 1–3 rows has too
/// few accumulator chains to cover the FMA latency: the last MR + 1..3 rows go as two halves
/// instead (M = 49: …, 7, 6 rather than …, 12, 1; 7×7 layers 6–7% faster). Balancing every
/// tile (11-row tiles) made the 14×14 layers slower.
pub(super) fn tile_rows(left: usize, mr: usize) -> usize {
    if left > mr && left < mr + 4 {
        left.div_ceil(2)
    } else {
        left.min(mr)
    }
}

/// Pointers of one microkernel call.
struct Tile {
    /// First of the tile's rows of A (row stride `Args::lda`; its first column when transposed).
    a: *const f32,
    bp: *const f32,
    c: *mut f32,
    cols: usize,
    bias: *const f32,
    /// This panel's column sums (null: none); the sums of squares follow `squares` later.
    moments: *mut f64,
    squares: usize,
}

/// Dispatches the last `rows < MR` rows to a tile of exactly that height.
#[inline(always)]
unsafe fn tail_tile<S: SimdF32, const MR: usize, const TA: bool>(
    s: S,
    x: &Args,
    t: &Tile,
    rows: usize,
) {
    // Safety: forwarded from gemm_blocks; `rows` rows remain in A and C.
    unsafe {
        match rows {
            1 => tile::<S, 1, TA>(s, x, t),
            2 => tile::<S, 2, TA>(s, x, t),
            3 => tile::<S, 3, TA>(s, x, t),
            4 => tile::<S, 4, TA>(s, x, t),
            5 => tile::<S, 5, TA>(s, x, t),
            6 => tile::<S, 6, TA>(s, x, t),
            7 => tile::<S, 7, TA>(s, x, t),
            8 => tile::<S, 8, TA>(s, x, t),
            9 => tile::<S, 9, TA>(s, x, t),
            10 => tile::<S, 10, TA>(s, x, t),
            11 => tile::<S, 11, TA>(s, x, t),
            _ => {
                // MR ≤ 12 for every instruction set, so rows < 12 always matched above.
                debug_assert!(rows < MR && MR <= 12);
            }
        }
    }
}

/// One `R × NR` tile of C: accumulate over all of K in registers, then bias, clamp, store.
#[inline(always)]
unsafe fn tile<S: SimdF32, const R: usize, const TA: bool>(s: S, x: &Args, t: &Tile) {
    let lanes = S::LANES;
    let nr = 2 * lanes;
    let (a, bp, c, cols, bias) = (t.a, t.bp, t.c, t.cols, t.bias);
    // Safety: A holds R rows of k values at stride lda (k rows of R values when transposed);
    // the panel holds k·nr values;
    // C rows hold `cols` writable values each (partial stores below `nr`).
    unsafe {
        let mut acc0 = [s.zero(); R];
        let mut acc1 = [s.zero(); R];
        for kk in 0..x.k {
            // B streams from L3 the first time a block is used; fetch it ahead. The address may
            // be past the panel's end: prefetches never fault.
            s.prefetch(bp.wrapping_add((kk + PREFETCH_K) * nr));
            s.prefetch(bp.wrapping_add((kk + PREFETCH_K) * nr + lanes));
            let b0 = s.load(bp.add(kk * nr));
            let b1 = s.load(bp.add(kk * nr + lanes));
            for i in 0..R {
                let at = if TA { kk * x.lda + i } else { i * x.lda + kk };
                let av = s.splat(*a.add(at));
                acc0[i] = s.fma(av, b0, acc0[i]);
                acc1[i] = s.fma(av, b1, acc1[i]);
            }
        }
        let (lo, hi) = (s.splat(x.min), s.splat(x.max));
        let n0 = cols.min(lanes);
        let n1 = cols - n0;
        let (bias0, bias1) = if bias.is_null() {
            (s.zero(), s.zero())
        } else if cols == nr {
            (s.load(bias), s.load(bias.add(lanes)))
        } else {
            let b0 = if n0 == lanes {
                s.load(bias)
            } else {
                s.load_partial(bias, n0)
            };
            let b1 = if n1 > 0 {
                s.load_partial(bias.add(lanes), n1)
            } else {
                s.zero()
            };
            (b0, b1)
        };
        let (mut s0, mut s1, mut q0, mut q1) = (s.zero(), s.zero(), s.zero(), s.zero());
        for i in 0..R {
            let row = c.add(i * x.ldc);
            let (mut a0, mut a1) = (acc0[i], acc1[i]);
            if x.accumulate {
                if cols == nr {
                    a0 = s.add(a0, s.load(row));
                    a1 = s.add(a1, s.load(row.add(lanes)));
                } else {
                    let old0 = if n0 == lanes {
                        s.load(row)
                    } else {
                        s.load_partial(row, n0)
                    };
                    a0 = s.add(a0, old0);
                    if n1 > 0 {
                        a1 = s.add(a1, s.load_partial(row.add(lanes), n1));
                    }
                }
            }
            let v0 = s.min(s.max(s.add(a0, bias0), lo), hi);
            let v1 = s.min(s.max(s.add(a1, bias1), lo), hi);
            if !t.moments.is_null() {
                (s0, s1) = (s.add(s0, v0), s.add(s1, v1));
                (q0, q1) = (s.fma(v0, v0, q0), s.fma(v1, v1, q1));
            }
            if cols == nr {
                s.store(row, v0);
                s.store(row.add(lanes), v1);
            } else {
                if n0 == lanes {
                    s.store(row, v0);
                } else {
                    s.store_partial(row, v0, n0);
                }
                if n1 > 0 {
                    s.store_partial(row.add(lanes), v1, n1);
                }
            }
        }
        if !t.moments.is_null() {
            // The padding columns of a last panel are zero (B is zero there, no bias).
            let (sum, sq) = (t.moments, t.moments.add(t.squares));
            s.add_to_f64(s0, sum);
            s.add_to_f64(s1, sum.add(lanes));
            s.add_to_f64(q0, sq);
            s.add_to_f64(q1, sq.add(lanes));
        }
    }
}
