//! The AVX-VNNI GEMM: 256-bit `vpdpbusd` without AVX-512 (Intel's client cores from Alder
//! Lake on; AMD Zen 5 has both). It reads B's packed quads as the AVX-512 kernel does, a
//! panel's 32 columns in two halves of 16 (two registers of 8 columns), and A in place: one
//! 32-bit broadcast per row and quad. Four products per lane and instruction, where the AVX2
//! kernel's `vpmaddwd` gives two and needs an add.
//!
//! Tiles: up to 6 rows × 16 columns (12 of the 16 registers). A uint8 model's row terms are
//! summed first (`vpsadbw`), as the AVX-512 kernel does.

use std::arch::x86_64::*;

use super::super::requant::x86_avx2::Rq8;
use super::{Job, NR};

/// Rows per tile.
const MR: usize = 6;

/// `C = requant(A·B + row_coeff·rowsum(A))` for rows `0..m` and the columns of `panels`.
///
/// # Safety
///
/// AVX2 and AVX-VNNI must be present, and `job` as [`super::qgemm_ptr`] checks it (C's rows
/// are the caller's to write in the columns of the panels).
#[target_feature(enable = "avx2,avxvnni")]
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
    // Safety: rows 0 .. m of A (k bytes, lda apart) and C exist; B's panels hold quads·128
    // bytes; the requantization is padded to a multiple of 16 channels.
    unsafe {
        let sums = row_terms(m, a, lda, k, row_coeff);
        for p in panels {
            let panel = b.data.as_ptr().cast::<u8>().add(p * b.quads * NR * 4);
            // Half h: columns p·32 + 16h .. of the panel, bytes 64h .. of each quad.
            for h in 0..2 {
                let j = p * NR + 16 * h;
                if j >= b.n {
                    break;
                }
                let cols = (b.n - j).min(16);
                let rqs = [Rq8::load(rq, j), Rq8::load(rq, j + 8)];
                let bp = panel.add(64 * h);
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
                        c: c.add(i * ldc + j),
                        ldc,
                        add,
                        cols,
                    };
                    match (rows, cols > 8) {
                        (6, true) => tile::<6, 2>(&t, bp, &rqs),
                        (5, true) => tile::<5, 2>(&t, bp, &rqs),
                        (4, true) => tile::<4, 2>(&t, bp, &rqs),
                        (3, true) => tile::<3, 2>(&t, bp, &rqs),
                        (2, true) => tile::<2, 2>(&t, bp, &rqs),
                        (1, true) => tile::<1, 2>(&t, bp, &rqs),
                        (6, false) => tile::<6, 1>(&t, bp, &rqs),
                        (5, false) => tile::<5, 1>(&t, bp, &rqs),
                        (4, false) => tile::<4, 1>(&t, bp, &rqs),
                        (3, false) => tile::<3, 1>(&t, bp, &rqs),
                        (2, false) => tile::<2, 1>(&t, bp, &rqs),
                        _ => tile::<1, 1>(&t, bp, &rqs),
                    }
                    i += rows;
                }
            }
        }
    }
}

/// `row_coeff · Σ A[r, ·]` for each of the `m` rows (empty when `row_coeff` is 0): 32 bytes
/// at a time by `vpsadbw`, the rest one by one.
///
/// # Safety
///
/// A holds `m` rows of `lda ≥ k` bytes; the CPU has AVX2.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn row_terms(m: usize, a: *const u8, lda: usize, k: usize, row_coeff: i32) -> Vec<i32> {
    if row_coeff == 0 {
        return Vec::new();
    }
    let mut terms = vec![0i32; m];
    // A plain loop, not an iterator's closure: a closure would not inherit the target
    // features.
    for (r, t) in terms.iter_mut().enumerate() {
        // Safety: row r's k bytes exist.
        unsafe {
            let row = a.add(r * lda);
            let mut acc = _mm256_setzero_si256();
            let mut kk = 0;
            while kk + 32 <= k {
                let v = _mm256_loadu_si256(row.add(kk).cast());
                acc = _mm256_add_epi64(acc, _mm256_sad_epu8(v, _mm256_setzero_si256()));
                kk += 32;
            }
            let mut lanes = [0u64; 4];
            _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc);
            let mut sum = lanes.iter().sum::<u64>() as i32;
            while kk < k {
                sum += *row.add(kk) as i32;
                kk += 1;
            }
            *t = row_coeff.wrapping_mul(sum);
        }
    }
    terms
}

/// One tile's rows of A, their row terms and where its 16 (or fewer) columns of C go.
struct Tile {
    a: *const u8,
    lda: usize,
    k: usize,
    c: *mut u8,
    ldc: usize,
    add: [i32; MR],
    cols: usize,
}

/// Broadcast of A's last, partial quad `q` of row `r`, the bytes past k read as 0.
#[inline(always)]
unsafe fn quad(t: &Tile, r: usize, q: usize) -> __m256i {
    unsafe {
        let p = t.a.add(r * t.lda + 4 * q);
        let mut four = [0u8; 4];
        for (j, f) in four.iter_mut().enumerate().take(t.k - 4 * q) {
            *f = *p.add(j);
        }
        _mm256_set1_epi32(i32::from_le_bytes(four))
    }
}

/// `R` rows × `8·V` columns of one half panel of B at `bp` (quads 128 bytes apart),
/// requantized with `rqs` into C.
#[inline(always)]
unsafe fn tile<const R: usize, const V: usize>(t: &Tile, bp: *const u8, rqs: &[Rq8; 2]) {
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); V]; R];
        let full = t.k / 4;
        for q in 0..full {
            step(&mut acc, t, bp, q, false);
        }
        if !t.k.is_multiple_of(4) {
            step(&mut acc, t, bp, full, true);
        }
        for (r, row) in acc.iter().enumerate() {
            let addv = _mm256_set1_epi32(t.add[r]);
            let o = t.c.add(r * t.ldc);
            for (v, a) in row.iter().enumerate() {
                if t.cols > 8 * v {
                    rqs[v].store(_mm256_add_epi32(*a, addv), t.cols - 8 * v, o.add(8 * v));
                }
            }
        }
    }
}

/// Quad `q` of every row against B's: `partial` for the last quad of a depth that is not a
/// multiple of 4 (its missing bytes read as 0).
#[inline(always)]
unsafe fn step<const R: usize, const V: usize>(
    acc: &mut [[__m256i; V]; R],
    t: &Tile,
    bp: *const u8,
    q: usize,
    partial: bool,
) {
    unsafe {
        let bq = bp.add(q * NR * 4);
        let mut bv = [_mm256_setzero_si256(); V];
        for (v, b) in bv.iter_mut().enumerate() {
            *b = _mm256_loadu_si256(bq.add(32 * v).cast());
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = match partial {
                true => quad(t, r, q),
                false => {
                    _mm256_set1_epi32(t.a.add(r * t.lda + 4 * q).cast::<i32>().read_unaligned())
                }
            };
            for (a, b) in row.iter_mut().zip(&bv) {
                *a = _mm256_dpbusd_avx_epi32(*a, av, *b);
            }
        }
    }
}
