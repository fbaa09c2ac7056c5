//! The AVX2 GEMM: `vpmaddwd` on 16-bit operands, exact in i32.
//!
//! B is widened once, on first use ([`Wide`]), to i16 with the call's row coefficient folded
//! in: each weight becomes `w + row_coeff` (for a uint8 model, the weight minus its zero
//! point, in −255..=255), so rows need no sums. Per group of 16 columns and pair of k, the 16
//! columns' two values lie side by side: `vpmaddwd` of A's pair (one 32-bit broadcast) against
//! one register gives 8 columns' sums of the pair in column order, so a tile ends without
//! horizontal adds. A's rows are widened once per row tile into a scratch buffer that stays in
//! L1 for every column group.
//!
//! Tiles: up to 6 rows × 16 columns (12 accumulators), or 8 rows × 8 columns when B has at
//! most 8 (a thin network's stem and first pointwise layers).

use std::arch::x86_64::*;

use super::super::requant::x86_avx2::Rq8;
use super::{Job, PackedQB, NR};

/// Rows per tile for 16 columns, and for B of at most 8 columns.
const MR: usize = 6;
const MR_NARROW: usize = 8;

/// Columns per group of [`Wide`].
const G: usize = 16;

/// B as i16 with a row coefficient folded in, in groups of 16 columns × pairs of k.
#[derive(Clone, Debug)]
pub(super) struct Wide {
    /// The row coefficient added to every weight (0 when a call's would not fit i16).
    coeff: i32,
    pairs: usize,
    data: Vec<i16>,
}

impl Wide {
    /// `b` widened, with `coeff` folded in when every `w + coeff` fits 16 bits.
    pub(super) fn new(b: &PackedQB, coeff: i32) -> Wide {
        let coeff = if coeff.unsigned_abs() <= 32_000 {
            coeff
        } else {
            0
        };
        let pairs = b.k.div_ceil(2);
        let mut data = vec![0i16; b.n.div_ceil(G) * pairs * G * 2];
        for col in 0..b.n {
            for kk in 0..b.k {
                data[((col / G * pairs + kk / 2) * G + col % G) * 2 + kk % 2] =
                    (b.at(kk, col) + coeff) as i16;
            }
        }
        Wide { coeff, pairs, data }
    }
}

/// `C = requant(A·B + row_coeff·rowsum(A))` for rows `0..m` and the columns of `panels`.
///
/// # Safety
///
/// AVX2 must be present, and `job` as [`super::qgemm_ptr`] checks it (C's rows are the
/// caller's to write in the columns of the panels).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gemm(job: Job) {
    let (m, b) = (job.m, job.b);
    let wide = b.wide.get_or_init(|| Wide::new(b, job.row_coeff));
    // What the folded coefficient leaves to per-row sums (0 for every call the engine makes).
    let rest = job.row_coeff.wrapping_sub(wide.coeff);
    let stride = wide.pairs * 2;
    let mr = if b.n <= 8 { MR_NARROW } else { MR };
    let mut scratch = vec![0i16; mr * stride];
    let mut i0 = 0;
    while i0 < m {
        let rows = (m - i0).min(mr);
        // Safety: rows i0 .. i0 + rows of A exist (k bytes each, lda apart); the scratch
        // holds rows·stride values, stride ≥ k.
        unsafe {
            if job.lda == stride {
                // Rows as far apart as the scratch's (the engine's activations and im2col):
                // one run of bytes.
                let len = (rows - 1) * stride + b.k;
                let run = std::slice::from_raw_parts(job.a.add(i0 * job.lda), len);
                widen(run, scratch.as_mut_ptr());
            } else {
                for r in 0..rows {
                    widen(job.a_row(i0 + r), scratch.as_mut_ptr().add(r * stride));
                }
            }
        }
        let mut add = [0i32; MR_NARROW];
        if rest != 0 {
            for (r, add) in add.iter_mut().enumerate().take(rows) {
                // Safety: i0 + r < m.
                let sum = unsafe { job.a_row(i0 + r) }
                    .iter()
                    .map(|&x| x as i32)
                    .sum::<i32>();
                *add = rest.wrapping_mul(sum);
            }
        }
        let t = Rows {
            a: scratch.as_ptr(),
            stride,
            pairs: wide.pairs,
            add,
            ldc: job.ldc,
        };
        for p in job.panels.clone() {
            for g in p * NR / G..((p + 1) * NR / G).min(b.n.div_ceil(G)) {
                let j = g * G;
                let cols = (b.n - j).min(G);
                // Safety: AVX2 is present; the requantization is padded to 16 channels past
                // j; the group holds pairs·32 values, the scratch rows·stride; rows i0.. and
                // columns j..j+cols of C are the caller's.
                unsafe {
                    let rq = [Rq8::load(job.rq, j), Rq8::load(job.rq, j + 8)];
                    let bp = wide.data.as_ptr().add(g * wide.pairs * G * 2);
                    let out = job.c_at(i0, j);
                    let x = (&t, bp, &rq, cols, out);
                    match (rows, cols > 8) {
                        (6, true) => tile::<6, 2>(x),
                        (5, true) => tile::<5, 2>(x),
                        (4, true) => tile::<4, 2>(x),
                        (3, true) => tile::<3, 2>(x),
                        (2, true) => tile::<2, 2>(x),
                        (1, true) => tile::<1, 2>(x),
                        (8, false) => tile::<8, 1>(x),
                        (7, false) => tile::<7, 1>(x),
                        (6, false) => tile::<6, 1>(x),
                        (5, false) => tile::<5, 1>(x),
                        (4, false) => tile::<4, 1>(x),
                        (3, false) => tile::<3, 1>(x),
                        (2, false) => tile::<2, 1>(x),
                        _ => tile::<1, 1>(x),
                    }
                }
            }
        }
        i0 += rows;
    }
}

/// Widens bytes to i16 at `dst`, 16, 8 and 4 at a time.
///
/// # Safety
///
/// AVX2 must be present; `dst` valid for `src.len()` writes.
#[inline(always)]
unsafe fn widen(src: &[u8], dst: *mut i16) {
    unsafe {
        let p = src.as_ptr();
        let mut i = 0;
        while i + 16 <= src.len() {
            let v = _mm_loadu_si128(p.add(i).cast());
            _mm256_storeu_si256(dst.add(i).cast(), _mm256_cvtepu8_epi16(v));
            i += 16;
        }
        if i + 8 <= src.len() {
            let v = _mm_loadl_epi64(p.add(i).cast());
            _mm_storeu_si128(dst.add(i).cast(), _mm_cvtepu8_epi16(v));
            i += 8;
        }
        if i + 4 <= src.len() {
            let v = _mm_cvtsi32_si128(p.add(i).cast::<i32>().read_unaligned());
            _mm_storel_epi64(dst.add(i).cast(), _mm_cvtepu8_epi16(v));
            i += 4;
        }
        for (k, &x) in src.iter().enumerate().skip(i) {
            *dst.add(k) = x as i16;
        }
    }
}

/// What the tiles of one row tile share: A's rows widened (`stride` values apart), the pairs
/// of k, each row's remaining row term and C's stride.
struct Rows {
    a: *const i16,
    stride: usize,
    pairs: usize,
    add: [i32; MR_NARROW],
    ldc: usize,
}

/// `R` rows × `8·V` columns of one group of B at `bp`, requantized with `rq` (columns `j..`,
/// `j + 8..`) into C at `out` (`cols` of them).
#[inline(always)]
unsafe fn tile<const R: usize, const V: usize>(
    (t, bp, rq, cols, out): (&Rows, *const i16, &[Rq8; 2], usize, *mut u8),
) {
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); V]; R];
        for p in 0..t.pairs {
            let bq = bp.add(p * G * 2);
            let mut bv = [_mm256_setzero_si256(); V];
            for (v, b) in bv.iter_mut().enumerate() {
                *b = _mm256_loadu_si256(bq.add(16 * v).cast());
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av =
                    _mm256_set1_epi32(t.a.add(r * t.stride + 2 * p).cast::<i32>().read_unaligned());
                for (a, b) in row.iter_mut().zip(&bv) {
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(av, *b));
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let addv = _mm256_set1_epi32(t.add[r]);
            let o = out.add(r * t.ldc);
            for (v, a) in row.iter().enumerate() {
                if cols > 8 * v {
                    rq[v].store(_mm256_add_epi32(*a, addv), cols - 8 * v, o.add(8 * v));
                }
            }
        }
    }
}
