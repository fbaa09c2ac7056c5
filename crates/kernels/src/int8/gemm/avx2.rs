//! The AVX2 GEMM: `vpmaddwd` on 16-bit operands, exact in i32.
//!
//! A tile is up to 3 rows × 16 columns: A's rows are widened to i16 once per row tile (into a
//! scratch buffer that stays in L1 for every panel of the range), so each quad of a row is one
//! 8-byte broadcast; B's bytes are sign-extended as they are loaded (four columns' quads per
//! register). Each `vpmaddwd` leaves two partial sums per column (k 0–1 and k 2–3 of a quad)
//! in adjacent lanes; the tile adds them pairwise at the end, requantizes 8 columns per
//! register (exact, [`Rq8`]) and stores bytes.

use std::arch::x86_64::*;

use super::super::requant::x86_avx2::Rq8;
use super::super::Requant;
use super::{Job, NR};

/// Rows per tile: 3 for 16 columns (12 accumulators), 6 when B has at most 8 columns (the
/// stem of a thin network, its first pointwise layers).
const MR: usize = 3;
const MR_NARROW: usize = 6;

/// `C = requant(A·B + row_coeff·rowsum(A))` for rows `0..m` and the columns of `panels`.
///
/// # Safety
///
/// AVX2 must be present, and `job` as [`super::qgemm_ptr`] checks it (C's rows are the
/// caller's to write in the columns of the panels).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gemm(job: Job) {
    let (m, b) = (job.m, job.b);
    let quads = b.quads;
    let mr = if b.n <= 8 { MR_NARROW } else { MR };
    let mut wide = vec![0i16; mr * quads * 4];
    let mut i0 = 0;
    while i0 < m {
        let rows = (m - i0).min(mr);
        let mut add = [0i32; MR_NARROW];
        for r in 0..rows {
            // Safety: i0 + r < m.
            let row = unsafe { job.a_row(i0 + r) };
            let dst = &mut wide[r * quads * 4..][..quads * 4];
            for (d, &x) in dst.iter_mut().zip(row) {
                *d = x as i16;
            }
            add[r] = job.row_term(row);
        }
        let tile_rows = Rows {
            wide: &wide,
            quads,
            add,
            rq: job.rq,
            ldc: job.ldc,
        };
        for p in job.panels.clone() {
            let panel = &b.data[p * quads * NR * 4..][..quads * NR * 4];
            for half in 0..NR / 16 {
                let j = p * NR + half * 16;
                if j >= b.n {
                    break;
                }
                let cols = (b.n - j).min(16);
                // Safety: AVX2 is present; the panel holds quads·128 bytes, `wide` rows·quads·4
                // values; rows i0.. and columns j..j+cols of C are the caller's.
                unsafe {
                    let t = (
                        &tile_rows,
                        panel.as_ptr().add(half * 64),
                        j,
                        cols,
                        job.c_at(i0, j),
                    );
                    match (rows, cols > 8) {
                        (3, true) => tile::<3, 4>(t),
                        (2, true) => tile::<2, 4>(t),
                        (1, true) => tile::<1, 4>(t),
                        (6, false) => tile::<6, 2>(t),
                        (5, false) => tile::<5, 2>(t),
                        (4, false) => tile::<4, 2>(t),
                        (3, false) => tile::<3, 2>(t),
                        (2, false) => tile::<2, 2>(t),
                        _ => tile::<1, 2>(t),
                    }
                }
            }
        }
        i0 += rows;
    }
}

/// What the tiles of one row tile share: A's rows widened to i16 (`quads·4` values each),
/// their `row_coeff·Σ` terms, the requantization and C's stride.
struct Rows<'a> {
    wide: &'a [i16],
    quads: usize,
    add: [i32; MR_NARROW],
    rq: &'a Requant,
    ldc: usize,
}

/// `R` rows × `4·V` columns (V = 4: 16 columns, V = 2: 8) from B's half panel at `bp`, for C's
/// columns `j..j + cols` at `out`.
#[inline(always)]
unsafe fn tile<const R: usize, const V: usize>(
    (rows, bp, j, cols, out): (&Rows, *const i8, usize, usize, *mut u8),
) {
    let Rows {
        wide,
        quads,
        add,
        rq,
        ldc,
    } = *rows;
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); V]; R];
        for q in 0..quads {
            let mut av = [_mm256_setzero_si256(); R];
            for (r, a) in av.iter_mut().enumerate() {
                let p = wide.as_ptr().add(r * quads * 4 + q * 4);
                *a = _mm256_set1_epi64x(std::ptr::read_unaligned(p.cast::<i64>()));
            }
            let bq = bp.add(q * NR * 4);
            for v in 0..V {
                let bw = _mm256_cvtepi8_epi16(_mm_loadu_si128(bq.add(16 * v).cast()));
                for (row, a) in acc.iter_mut().zip(&av) {
                    row[v] = _mm256_add_epi32(row[v], _mm256_madd_epi16(*a, bw));
                }
            }
        }
        // Pairwise sums in column order: hadd gives (0 1 4 5 | 2 3 6 7), the permute fixes it.
        let order = |x: __m256i, y: __m256i| {
            _mm256_permute4x64_epi64(_mm256_hadd_epi32(x, y), 0b11_01_10_00)
        };
        let lo = Rq8::load(rq, j);
        let hi = (V == 4).then(|| Rq8::load(rq, j + 8));
        for r in 0..R {
            let addv = _mm256_set1_epi32(add[r]);
            let o = out.add(r * ldc);
            lo.store(
                _mm256_add_epi32(order(acc[r][0], acc[r][1]), addv),
                cols.min(8),
                o,
            );
            if let Some(hi) = &hi {
                hi.store(
                    _mm256_add_epi32(order(acc[r][V - 2], acc[r][V - 1]), addv),
                    cols - 8,
                    o.add(8),
                );
            }
        }
    }
}
