//! The AVX-512 VNNI GEMM: 12 × 32 tiles of `vpdpbusd` in 24 registers, requantized in
//! registers (see the module above for B's packing and the row terms of uint8 models).

use std::arch::x86_64::*;

use super::super::requant::x86::store_rows;
use super::super::Requant;
use super::{Job, MR, NR};

/// Row tiles of MR rows (the rows' bytes stay in L1) × every panel of the range.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
pub(super) unsafe fn gemm(job: Job) {
    let Job {
        m,
        a,
        lda,
        b,
        row_coeff,
        rq,
        c,
        ldc,
        panels,
    } = job;
    let k = b.k;
    // Row terms first; then panel by panel (its K×32 bytes stay in L1) over the row tiles
    // (A streams from L2: 12 broadcasts per 24 multiply-adds, less than B's two vectors).
    // Safety: rows 0 .. m of A and C exist (checked by qgemm).
    unsafe {
        let sums = row_terms(m, a, lda, k, row_coeff);
        for p in panels {
            let bp = b.data.as_ptr().add(p * b.quads * NR * 4);
            let cols = (b.n - p * NR).min(NR);
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(MR);
                let mut add = [0i32; MR];
                if row_coeff != 0 {
                    add[..rows].copy_from_slice(&sums[i..i + rows]);
                }
                let t = Tile {
                    a: a.add(i * lda),
                    lda,
                    k,
                    c: c.add(i * ldc),
                    ldc,
                    add: &add,
                    rq,
                };
                match rows {
                    12 => halves::<12>(&t, bp, p * NR, cols),
                    11 => halves::<11>(&t, bp, p * NR, cols),
                    10 => halves::<10>(&t, bp, p * NR, cols),
                    9 => halves::<9>(&t, bp, p * NR, cols),
                    8 => halves::<8>(&t, bp, p * NR, cols),
                    7 => halves::<7>(&t, bp, p * NR, cols),
                    6 => halves::<6>(&t, bp, p * NR, cols),
                    5 => halves::<5>(&t, bp, p * NR, cols),
                    4 => halves::<4>(&t, bp, p * NR, cols),
                    3 => halves::<3>(&t, bp, p * NR, cols),
                    2 => halves::<2>(&t, bp, p * NR, cols),
                    _ => halves::<1>(&t, bp, p * NR, cols),
                }
                i += rows;
            }
        }
    }
}

/// `row_coeff · Σ A[r, ·]` for each of the `m` rows (empty when `row_coeff` is 0).
///
/// # Safety
///
/// A holds `m` rows of `lda ≥ k` bytes; the CPU has AVX-512 BW.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
pub(super) unsafe fn row_terms(
    m: usize,
    a: *const u8,
    lda: usize,
    k: usize,
    row_coeff: i32,
) -> Vec<i32> {
    if row_coeff == 0 {
        return Vec::new();
    }
    // A plain loop, not an iterator's closure: a closure would not inherit this
    // function's target features, and the intrinsics in it became calls (80% of a
    // 4096×28 GEMM's time went to them).
    let mut terms = vec![0i32; m];
    let mut r = 0;
    if lda == k && matches!(k, 8 | 16 | 32 | 64) {
        // Contiguous short rows (the first layers' 8, 16 or 32 bytes), 64/k of them per
        // vector: one byte-sum gives eight 8-byte groups' sums, added up per row in
        // registers (pairs, then halves of 256 bits: k a power of two). A row's own
        // horizontal sum cost more than its share of the GEMM.
        let per = 64 / k;
        let step = (k / 8) as i64;
        // Safety: rows r .. r + per are 64 contiguous bytes of A; `terms` has m slots.
        unsafe {
            let pick = _mm512_setr_epi64(
                0,
                step,
                2 * step,
                3 * step,
                4 * step,
                5 * step,
                6 * step,
                7 * step,
            );
            let coeff = _mm256_set1_epi32(row_coeff);
            let keep = ((1u32 << per) - 1) as u8;
            while r + per <= m {
                let v = _mm512_loadu_si512(a.add(r * k).cast());
                let mut g = _mm512_sad_epu8(v, _mm512_setzero_si512());
                if k >= 16 {
                    g = _mm512_add_epi64(g, _mm512_bsrli_epi128::<8>(g));
                }
                if k >= 32 {
                    g = _mm512_add_epi64(g, _mm512_shuffle_i64x2::<0b11_11_01_01>(g, g));
                }
                if k == 64 {
                    g = _mm512_add_epi64(g, _mm512_shuffle_i64x2::<0b10_10_10_10>(g, g));
                }
                let sums = _mm512_cvtepi64_epi32(_mm512_permutexvar_epi64(pick, g));
                let t = _mm256_mullo_epi32(sums, coeff);
                _mm256_mask_storeu_epi32(terms.as_mut_ptr().add(r).cast(), keep, t);
                r += per;
            }
        }
    }
    for (r, t) in terms.iter_mut().enumerate().skip(r) {
        // Safety: as the caller's.
        *t = row_coeff.wrapping_mul(unsafe { row_sum(a.add(r * lda), k) });
    }
    terms
}

/// Σ of `k` bytes: whole 64-byte vectors, then one masked load for the rest (the stem's
/// 28 and the first layers' 8 or 16 bytes are one load each).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
#[inline]
unsafe fn row_sum(p: *const u8, k: usize) -> i32 {
    // Safety: the loads read bytes p .. p + k (masked lanes are not read).
    unsafe {
        let mut acc = _mm512_setzero_si512();
        let mut kk = 0;
        while kk + 64 <= k {
            let v = _mm512_loadu_si512(p.add(kk).cast());
            acc = _mm512_add_epi64(acc, _mm512_sad_epu8(v, _mm512_setzero_si512()));
            kk += 64;
        }
        if kk < k {
            let v = _mm512_maskz_loadu_epi8(u64::MAX >> (64 - (k - kk)), p.add(kk).cast());
            acc = _mm512_add_epi64(acc, _mm512_sad_epu8(v, _mm512_setzero_si512()));
        }
        _mm512_reduce_add_epi64(acc) as i32
    }
}

struct Tile<'a> {
    a: *const u8,
    lda: usize,
    k: usize,
    c: *mut u8,
    ldc: usize,
    add: &'a [i32; MR],
    rq: &'a Requant,
}

/// Broadcast of A's quad `q` of row `i` (the bytes past k read as 0).
#[inline(always)]
unsafe fn quad(t: &Tile, i: usize, q: usize) -> __m512i {
    unsafe {
        let p = t.a.add(i * t.lda + 4 * q);
        let v = if 4 * q + 4 <= t.k {
            p.cast::<i32>().read_unaligned()
        } else {
            let mut four = [0u8; 4];
            for (j, f) in four.iter_mut().enumerate().take(t.k - 4 * q) {
                *f = *p.add(j);
            }
            i32::from_le_bytes(four)
        };
        _mm512_set1_epi32(v)
    }
}

/// [`tile`] over both vectors of the panel, or only the first where the panel has at most
/// 16 columns (the first layers' 8 and 16 outputs: half the multiply-adds).
#[inline(always)]
unsafe fn halves<const R: usize>(t: &Tile, bp: *const i8, j0: usize, cols: usize) {
    // Safety: forwarded.
    unsafe {
        if cols > 16 {
            tile::<R, 2>(t, bp, j0, cols)
        } else {
            tile::<R, 1>(t, bp, j0, cols)
        }
    }
}

/// An R × 16·H tile: all of K in registers, then requantized and stored.
#[inline(always)]
unsafe fn tile<const R: usize, const H: usize>(t: &Tile, bp: *const i8, j0: usize, cols: usize) {
    unsafe {
        let mut acc0 = [_mm512_setzero_si512(); R];
        let mut acc1 = [_mm512_setzero_si512(); R];
        let full = t.k / 4;
        for q in 0..full {
            let b0 = _mm512_loadu_si512(bp.add(q * NR * 4).cast());
            let b1 = match H {
                2 => _mm512_loadu_si512(bp.add(q * NR * 4 + 64).cast()),
                _ => b0,
            };
            for i in 0..R {
                let av =
                    _mm512_set1_epi32(t.a.add(i * t.lda + 4 * q).cast::<i32>().read_unaligned());
                acc0[i] = _mm512_dpbusd_epi32(acc0[i], av, b0);
                if H == 2 {
                    acc1[i] = _mm512_dpbusd_epi32(acc1[i], av, b1);
                }
            }
        }
        if !t.k.is_multiple_of(4) {
            let b0 = _mm512_loadu_si512(bp.add(full * NR * 4).cast());
            let b1 = match H {
                2 => _mm512_loadu_si512(bp.add(full * NR * 4 + 64).cast()),
                _ => b0,
            };
            for i in 0..R {
                let av = quad(t, i, full);
                acc0[i] = _mm512_dpbusd_epi32(acc0[i], av, b0);
                if H == 2 {
                    acc1[i] = _mm512_dpbusd_epi32(acc1[i], av, b1);
                }
            }
        }
        let out = t.c.add(j0);
        store_rows::<R, H>(t.rq, j0, &acc0, &acc1, t.add, out, t.ldc, cols);
    }
}
