//! bf16 GEMM: `C = epilogue(A · B)` with A and B rounded to bfloat16 and the products summed
//! in f32, on AVX512-BF16 (`vdpbf16ps`: 32 bf16 products per instruction, two
//! per f32 lane, at the issue rate of an f32 FMA — twice its multiply-adds; Zen 4/5, Cooper
//! Lake, Sapphire Rapids).
//!
//! B is packed once from an f32 packing ([`super::PackedB::to_bf16`]) in the same panels of
//! 32 columns, but with k taken in pairs: each 32-bit slot holds `(B[2q, j], B[2q + 1, j])`
//! as two bf16 (even k in the low half, the order `vdpbf16ps` pairs them), so one panel row
//! of pairs is two vectors. A stays f32 in memory; each call first rounds its rows to bf16
//! pairs in a per-thread buffer (one pass over A against `n / 32` passes of multiply-adds),
//! and the microkernel broadcasts a row's pair from there against B's two vectors.
//!
//! Training uses the GEMM's other two forms too: column moments (batch norm's statistics of
//! the forward output, summed as the f32 kernel sums them) and A given transposed (the weight
//! gradient `Xᵀ · dZ`, whose pairs of k are two rows of X: rounded into a buffer of `k/2` rows
//! of `m` pairs, the layout the tile then reads with other strides). A B that changes every
//! call (the weight gradient's dZ) is packed into pairs directly from rows of f32
//! ([`super::PackedB::new_bf16`], [`super::PackedB::repack`]).
//!
//! Rounding is to nearest, ties to even, as `vcvtne2ps2bf16` does; [`round_bf16`] is the same
//! rounding in portable Rust (the tests' reference and B's packing).

/// `x` rounded to the nearest bfloat16 (ties to even), as its 16 bits, as the hardware
/// conversion does: NaN stays a (quiet) NaN of the same sign, values that round past the
/// largest finite bf16 become infinities, and subnormal f32 (below 1.2·10⁻³⁸) become zeros of
/// their sign (`vcvtne2ps2bf16` treats them as zero, whatever MXCSR says).
pub fn round_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if x.is_subnormal() {
        return ((bits >> 16) & 0x8000) as u16;
    }
    let lsb = (bits >> 16) & 1;
    ((bits + 0x7fff + lsb) >> 16) as u16
}

/// The f32 value of bfloat16 bits.
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Whether this CPU runs the bf16 GEMM: AVX-512 (F, BW) with the BF16 extension.
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Panel width of the bf16 packing: two vectors of 16 f32 lanes, as the AVX-512 f32 packing.
pub(super) const NR: usize = 32;

/// Rows per register tile: 12 rows × 2 vectors = 24 accumulators, 2 B vectors and a broadcast
/// (of AVX-512's 32 registers), as the f32 microkernel.
#[cfg(target_arch = "x86_64")]
const MR: usize = 12;

/// Bytes of packed B per block that stays in L2 while the row tiles pass over it (as the f32
/// kernel's 256 KB: twice the columns per block here).
#[cfg(target_arch = "x86_64")]
const B_BLOCK_BYTES: usize = 256 << 10;

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// One row tile of A rounded to bf16 pairs, per thread.
    static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `args` (B packed as bf16 pairs) on this CPU.
///
/// # Safety
///
/// The pointers in `args` cover the shapes it states; the CPU has AVX512-BF16 (checked when
/// B was packed).
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn gemm(x: &super::microkernel::Args) {
    let kp = x.k.div_ceil(2);
    // A's rows are rounded all at once into a buffer when that stays in L2 (the tiles may
    // pass over B in several blocks, and a small tile's call costs more than its rounding:
    // 1.0-224 and 0.5-160 at batch 1 ran 3–5% slower rounded per tile), else one tile at a
    // time while in cache (rounding a large A first wrote and read back half its size: the
    // large layers of training lost a third to it).
    let whole = x.m * kp * 4 <= WHOLE_A_BYTES;
    let len = if whole { x.m * kp } else { MR * kp };
    PAIRS.with_borrow_mut(|pairs| {
        if pairs.len() < len {
            pairs.resize(len, 0);
        }
        // Safety: as the caller's; the buffer holds all of A's pairs or a tile's MR rows.
        unsafe { avx512::gemm(x, pairs.as_mut_ptr(), kp, whole) }
    });
}

/// The most bytes of A's pairs rounded in one pass before the tiles (see `gemm`).
#[cfg(target_arch = "x86_64")]
const WHOLE_A_BYTES: usize = 1 << 20;

/// Packs `k × n` f32 (rows `ldb` apart) into panels of [`NR`] columns of bf16 pairs at `out`
/// (`n.div_ceil(NR)` panels of `k.div_ceil(2) · NR` u32, zero past `n`), as
/// [`super::PackedB::to_bf16`] lays them out.
///
/// # Safety
///
/// `b` holds k rows of n values at stride ldb, `out` the panels; the CPU has AVX512-BF16.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn pack_pairs(b: *const f32, ldb: usize, k: usize, n: usize, out: *mut u32) {
    let kp = k.div_ceil(2);
    for p in 0..n.div_ceil(NR) {
        let cols = (n - p * NR).min(NR);
        // Safety: as the caller's; panel p starts at p·kp·NR.
        unsafe { avx512::interleave(b.add(p * NR), ldb, k, cols, NR, out.add(p * kp * NR), NR) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn gemm(_: &super::microkernel::Args) {
    unreachable!("bf16 packings are only made where bf16_supported()");
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn pack_pairs(_: *const f32, _: usize, _: usize, _: usize, _: *mut u32) {
    unreachable!("bf16 packings are only made where bf16_supported()");
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::microkernel::{tile_rows, Args};
    use super::{B_BLOCK_BYTES, MR, NR};

    /// Rounds `m` rows of `k` f32 (stride `lda`) to bf16 pairs at `out` (`k.div_ceil(2)` u32
    /// per row; an odd k's last pair has a zero high half).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn round_rows(a: *const f32, lda: usize, m: usize, k: usize, out: *mut u32) {
        let kp = k.div_ceil(2);
        // The last `k mod 32` values of every row: masks for the two loads and the store.
        let (whole, left) = (k - k % 32, k % 32);
        let (m_lo, m_hi) = (mask(left.min(16)), mask(left.saturating_sub(16)));
        let m_out = mask(left.div_ceil(2));
        // Safety: A holds m rows of k values at stride lda, out m rows of kp pairs.
        unsafe {
            for r in 0..m {
                let (src, dst) = (a.add(r * lda), out.add(r * kp));
                for kk in (0..whole).step_by(32) {
                    let lo = _mm512_loadu_ps(src.add(kk));
                    let hi = _mm512_loadu_ps(src.add(kk + 16));
                    let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    _mm512_storeu_si512(dst.add(kk / 2).cast(), v);
                }
                if left > 0 {
                    let lo = _mm512_maskz_loadu_ps(m_lo, src.add(whole));
                    let hi = _mm512_maskz_loadu_ps(m_hi, src.add(whole + 16));
                    let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    _mm512_mask_storeu_epi32(dst.add(whole / 2).cast(), m_out, v);
                }
            }
        }
    }

    /// Pairs rows `2q` and `2q + 1` of `k` rows of f32 (stride `ld`): row q of `out` (stride
    /// `ld_out` u32) gets `width` pairs `(src[2q][j], src[2q + 1][j])` (low, high half), zero
    /// for `j ≥ cols` and in the high half of an odd k's last pair.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn interleave(
        src: *const f32,
        ld: usize,
        k: usize,
        cols: usize,
        width: usize,
        out: *mut u32,
        ld_out: usize,
    ) {
        // Word t of (hi, lo) converted is lo[t] for t < 16, hi[t − 16] after: pick them
        // alternately so each 32-bit lane holds (lo[j], hi[j]).
        let order = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        // Safety: rows 2q and 2q + 1 < k hold `cols` values; out rows hold `width`.
        unsafe {
            for q in 0..k.div_ceil(2) {
                let r0 = src.add(2 * q * ld);
                let has_r1 = 2 * q + 1 < k;
                let dst = out.add(q * ld_out);
                for j in (0..width).step_by(16) {
                    // Whole vectors without masks where they can (masked stores cost more).
                    let (lo, hi) = if j + 16 <= cols {
                        let lo = _mm512_loadu_ps(r0.add(j));
                        let hi = match has_r1 {
                            true => _mm512_loadu_ps(r0.add(ld + j)),
                            false => _mm512_setzero_ps(),
                        };
                        (lo, hi)
                    } else {
                        let live = mask(cols.saturating_sub(j).min(16));
                        let lo = _mm512_maskz_loadu_ps(live, r0.add(j));
                        let hi = match has_r1 {
                            true => _mm512_maskz_loadu_ps(live, r0.add(ld + j)),
                            false => _mm512_setzero_ps(),
                        };
                        (lo, hi)
                    };
                    let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    let v = _mm512_permutexvar_epi16(order, v);
                    if j + 16 <= width {
                        _mm512_storeu_si512(dst.add(j).cast(), v);
                    } else {
                        _mm512_mask_storeu_epi32(dst.add(j).cast(), mask(width - j), v);
                    }
                }
            }
        }
    }

    /// Adds the 16 lanes of `v` to 16 f64 at `dst`.
    #[inline(always)]
    unsafe fn add_to_f64(v: __m512, dst: *mut f64) {
        // Safety: dst holds 16 values (the caller's).
        unsafe {
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(v),
            )));
            _mm512_storeu_pd(dst, _mm512_add_pd(_mm512_loadu_pd(dst), lo));
            _mm512_storeu_pd(dst.add(8), _mm512_add_pd(_mm512_loadu_pd(dst.add(8)), hi));
        }
    }

    /// The low `n ≤ 16` lanes.
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// Blocks of panels that fit in L2 → tiles of MR rows → panels of the block, as the f32
    /// microkernel's loops (with its split of a short last tile into two halves); A's rows
    /// rounded into `pairs` all at once (`whole`: m rows) or one tile at a time (MR rows).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn gemm(x: &Args, pairs: *mut u32, kp: usize, whole: bool) {
        let panels = x.n.div_ceil(NR);
        let block = (B_BLOCK_BYTES / (kp * NR * 4).max(1)).max(1);
        let b = x.b.cast::<u32>();
        // Safety: tiles stay inside C's m × n and A's m × k; the pairs hold m × kp (whole) or
        // MR × kp; panel p starts at p·kp·NR.
        unsafe {
            if whole {
                match x.a_trans {
                    true => interleave(x.a, x.lda, x.k, x.m, x.m, pairs, x.m),
                    false => round_rows(x.a, x.lda, x.m, x.k, pairs),
                }
            }
            let mut p_start = x.p0;
            while p_start < panels {
                let p_end = (p_start + block).min(panels);
                let mut i = 0;
                while i < x.m {
                    let rows = tile_rows(x.m - i, MR);
                    // Pair q of the tile's row r at `a + r·row + q·step`.
                    let (a, row, step) = match (whole, x.a_trans) {
                        (true, true) => (pairs.add(i), 1, x.m),
                        (true, false) => (pairs.add(i * kp), kp, 1),
                        (false, true) => {
                            // Aᵀ's rows 2q and 2q + 1, the tile's columns of them, make row q.
                            interleave(x.a.add(i), x.lda, x.k, rows, rows, pairs, rows);
                            (pairs, 1, rows)
                        }
                        (false, false) => {
                            round_rows(x.a.add(i * x.lda), x.lda, rows, x.k, pairs);
                            (pairs, kp, 1)
                        }
                    };
                    for p in p_start..p_end {
                        let t = Tile {
                            a,
                            row,
                            step,
                            kp,
                            bp: b.add(p * kp * NR),
                            c: x.c.add(i * x.ldc + (p - x.p0) * NR),
                            ldc: x.ldc,
                            cols: (x.n - p * NR).min(NR),
                            bias: if x.bias.is_null() {
                                x.bias
                            } else {
                                x.bias.add(p * NR)
                            },
                            min: x.min,
                            max: x.max,
                            accumulate: x.accumulate,
                            moments: if x.moments.is_null() {
                                x.moments
                            } else {
                                x.moments.add(p * NR)
                            },
                            squares: panels * NR,
                        };
                        tiles(rows, &t);
                    }
                    i += rows;
                }
                p_start = p_end;
            }
        }
    }

    struct Tile {
        /// The tile's first row of pairs: pair q of its row i at `a + i·row + q·step`.
        a: *const u32,
        row: usize,
        step: usize,
        kp: usize,
        bp: *const u32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        bias: *const f32,
        min: f32,
        max: f32,
        accumulate: bool,
        /// This panel's column sums (null: none); the sums of squares follow `squares` later.
        moments: *mut f64,
        squares: usize,
    }

    /// The tile of `rows` rows.
    #[inline(always)]
    unsafe fn tiles(rows: usize, t: &Tile) {
        // Safety: forwarded.
        unsafe {
            match rows {
                12 => tile::<12>(t),
                11 => tile::<11>(t),
                10 => tile::<10>(t),
                9 => tile::<9>(t),
                8 => tile::<8>(t),
                7 => tile::<7>(t),
                6 => tile::<6>(t),
                5 => tile::<5>(t),
                4 => tile::<4>(t),
                3 => tile::<3>(t),
                2 => tile::<2>(t),
                _ => tile::<1>(t),
            }
        }
    }

    /// One `R × 32` tile: every pair of K in registers, then bias, clamp, store.
    #[inline(always)]
    unsafe fn tile<const R: usize>(t: &Tile) {
        // Safety: the tile's R rows of pairs, its panel of kp·NR pairs and R rows of `cols`
        // writable values of C exist (gemm's loops).
        unsafe {
            let mut acc0 = [_mm512_setzero_ps(); R];
            let mut acc1 = [_mm512_setzero_ps(); R];
            for q in 0..t.kp {
                _mm_prefetch::<_MM_HINT_T0>(t.bp.wrapping_add((q + 16) * NR).cast());
                _mm_prefetch::<_MM_HINT_T0>(t.bp.wrapping_add((q + 16) * NR + 16).cast());
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(t.bp.add(q * NR).cast()));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(t.bp.add(q * NR + 16).cast()));
                for i in 0..R {
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                        *t.a.add(i * t.row + q * t.step) as i32,
                    ));
                    acc0[i] = _mm512_dpbf16_ps(acc0[i], av, b0);
                    acc1[i] = _mm512_dpbf16_ps(acc1[i], av, b1);
                }
            }
            let n0 = t.cols.min(16);
            let n1 = t.cols - n0;
            let (m0, m1) = (mask(n0), mask(n1));
            let (bias0, bias1) = if t.bias.is_null() {
                (_mm512_setzero_ps(), _mm512_setzero_ps())
            } else {
                (
                    _mm512_maskz_loadu_ps(m0, t.bias),
                    _mm512_maskz_loadu_ps(m1, t.bias.add(16)),
                )
            };
            let (lo, hi) = (_mm512_set1_ps(t.min), _mm512_set1_ps(t.max));
            for i in 0..R {
                let row = t.c.add(i * t.ldc);
                let (mut a0, mut a1) = (acc0[i], acc1[i]);
                if t.accumulate {
                    a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(m0, row));
                    a1 = _mm512_add_ps(a1, _mm512_maskz_loadu_ps(m1, row.add(16)));
                }
                let v0 = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(a0, bias0), lo), hi);
                let v1 = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(a1, bias1), lo), hi);
                if t.cols == NR {
                    // Plain stores where the panel is whole: masked ones cost more (Zen 5,
                    // C streaming to memory).
                    _mm512_storeu_ps(row, v0);
                    _mm512_storeu_ps(row.add(16), v1);
                } else {
                    _mm512_mask_storeu_ps(row, m0, v0);
                    _mm512_mask_storeu_ps(row.add(16), m1, v1);
                }
            }
            if !t.moments.is_null() {
                // The tile's rows again, from L1 (summed beside the stores above they held
                // four more registers through every tile: inference lost 2–4%). The padding
                // columns of a last panel are zero (B is zero there, no bias).
                let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                let (mut q0, mut q1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                for i in 0..R {
                    let row = t.c.add(i * t.ldc);
                    let v0 = _mm512_maskz_loadu_ps(m0, row);
                    let v1 = _mm512_maskz_loadu_ps(m1, row.add(16));
                    (s0, s1) = (_mm512_add_ps(s0, v0), _mm512_add_ps(s1, v1));
                    (q0, q1) = (_mm512_fmadd_ps(v0, v0, q0), _mm512_fmadd_ps(v1, v1, q1));
                }
                let (sum, sq) = (t.moments, t.moments.add(t.squares));
                add_to_f64(s0, sum);
                add_to_f64(s1, sum.add(16));
                add_to_f64(q0, sq);
                add_to_f64(q1, sq.add(16));
            }
        }
    }
}

#[cfg(test)]
mod tests;
