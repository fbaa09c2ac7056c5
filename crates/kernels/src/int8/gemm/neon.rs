//! aarch64 u8 × s8 GEMMs on the quad-packed B of [`super::PackedQB`].
//!
//! The dot and mull forms multiply signed bytes, so A's bytes are flipped to `a − 128` (one `eor` per 16
//! bytes) and the accumulators start from `128·Σ_k B[k, j]` (packed with B), which restores
//! `Σ a·b` exactly in wrapping i32 arithmetic.
//!
//! - **dot** (`sdot`, by element): B's 16 bytes hold 4 columns × one quad; `sdot v.4s, b.16b,
//!   a.4b[l]` adds row's quad `l` against them — 16 multiply-adds per instruction. A tile is
//!   4 rows × 16 columns: 16 accumulators, 4 A registers (16 bytes = 4 quads each), 4 B.
//! - **mull** (no dot product): `smull`/`smull2` multiply B's 16 bytes by the row's quad
//!   repeated (exact in i16: |a·b| ≤ 2^14), `sadalp` adds neighbouring pairs into i32 lanes,
//!   and the pairs of a column are added once at the end (`addp`). A tile is 2 rows × 16
//!   columns.
//! - **mmla** (i8mm): `usmmla` multiplies two rows' 8 unsigned bytes by two columns' 8 signed
//!   bytes into a 2 × 2 block — 32 multiply-adds per instruction, no flip of A. B is packed
//!   a second time for it ([`pack_octets`]); a tile is 4 rows × 16 columns (2 row pairs × 8
//!   column pairs: 16 accumulators), each row pair's 16 bytes loaded as two 8-byte halves.

use std::arch::aarch64::*;
use std::arch::asm;

use super::super::requant::neon::{narrow8, store_bytes, Rq4};
use super::{Job, NR};

/// Which instruction multiplies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    Dot,
    Mull,
    Mmla,
}

/// Column pairs in a panel.
const PAIRS: usize = NR / 2;

/// `w` (`[n, k]`) in `usmmla`'s layout: panel `p`, octet `o`, column pair `c` at
/// `((p·octets + o)·PAIRS + c)·16`, the pair's two columns' 8 bytes each (zeros past k and n).
pub(super) fn pack_octets(w: &[i8], k: usize, n: usize) -> Vec<i8> {
    let octets = k.div_ceil(8);
    let mut data = vec![0i8; n.div_ceil(NR) * octets * PAIRS * 16];
    for col in 0..n {
        let (p, j) = (col / NR, col % NR);
        for kk in 0..k {
            data[((p * octets + kk / 8) * PAIRS + j / 2) * 16 + (j % 2) * 8 + kk % 8] =
                w[col * k + kk];
        }
    }
    data
}

/// Runs `job` with `form`.
///
/// # Safety
///
/// As [`super::qgemm_ptr`]; for [`Form::Dot`] the CPU must have the dot-product extension,
/// for [`Form::Mmla`] i8mm.
pub(super) unsafe fn gemm(job: Job, form: Form) {
    let b = job.b;
    assert!(
        form != Form::Mmla || b.octets.len() == b.panels() * b.k.div_ceil(8) * PAIRS * 16,
        "B was not packed for i8mm"
    );
    let rows_per_tile = match form {
        Form::Dot | Form::Mmla => 4,
        Form::Mull => 2,
    };
    let octets = b.k.div_ceil(8);
    let terms: Vec<i32> = (0..job.m)
        // Safety: i < m.
        .map(|i| job.row_term(unsafe { job.a_row(i) }))
        .collect();
    for p in job.panels.clone() {
        for half in 0..2 {
            let j0 = p * NR + half * 16;
            if j0 >= b.n {
                break;
            }
            let cols = (b.n - j0).min(16);
            // Safety: the panel's quads (octets) are packed whole (columns past n are zeros).
            let bp = unsafe {
                match form {
                    Form::Mmla => b
                        .octets
                        .as_ptr()
                        .add((p * octets * PAIRS + half * PAIRS / 2) * 16),
                    _ => b.data.as_ptr().add(p * b.quads * NR * 4 + half * 64),
                }
            };
            let mut i = 0;
            while i < job.m {
                let r = (job.m - i).min(rows_per_tile);
                let t = Tile {
                    job: &job,
                    i,
                    bp,
                    j0,
                    cols,
                    terms: &terms[i..i + r],
                };
                // Safety: rows i .. i + r exist; the caller's promises cover the rest.
                unsafe {
                    match (form, r) {
                        (Form::Dot, 4) => dot_tile::<4>(&t),
                        (Form::Dot, 3) => dot_tile::<3>(&t),
                        (Form::Dot, 2) => dot_tile::<2>(&t),
                        (Form::Dot, _) => dot_tile::<1>(&t),
                        (Form::Mull, 2) => mull_tile::<2>(&t),
                        (Form::Mull, _) => mull_tile::<1>(&t),
                        (Form::Mmla, 3 | 4) => mmla_tile::<2>(&t, r),
                        (Form::Mmla, _) => mmla_tile::<1>(&t, r),
                    }
                }
                i += r;
            }
        }
    }
}

/// One tile: rows `i ..` of the job, the 16 columns from `j0` (`cols` of them real).
struct Tile<'a, 'b> {
    job: &'a Job<'b>,
    i: usize,
    /// The tile's first quad in B: its 16 columns' 64 bytes, the next quad 128 bytes on
    /// (for `usmmla`: the first octet's 8 column pairs, the next octet 256 bytes on).
    bp: *const i8,
    j0: usize,
    cols: usize,
    terms: &'a [i32],
}

impl Tile<'_, '_> {
    /// Bytes `16·g ..` of row `r` of the tile, flipped to signed; past k the bytes are
    /// whatever (B is zero there).
    ///
    /// # Safety
    ///
    /// `r` is a row of the tile.
    #[inline(always)]
    unsafe fn a16(&self, r: usize, g: usize) -> int8x16_t {
        let k = self.job.b.k;
        // Safety: row i + r holds k bytes at a; a whole load only when 16 bytes remain.
        unsafe {
            let p = self.job.a.add((self.i + r) * self.job.lda + 16 * g);
            let v = if 16 * g + 16 <= k {
                vld1q_u8(p)
            } else {
                let mut buf = [0u8; 16];
                std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), k - 16 * g);
                vld1q_u8(buf.as_ptr())
            };
            vreinterpretq_s8_u8(veorq_u8(v, vdupq_n_u8(0x80)))
        }
    }

    /// `128·Σ_k B[k, j]` for the tile's 16 columns.
    #[inline(always)]
    fn xor_sums(&self) -> [int32x4_t; 4] {
        // Safety: xor_sums holds panels·NR values and j0 + 16 ≤ that.
        std::array::from_fn(|v| unsafe {
            vld1q_s32(self.job.b.xor_sums.as_ptr().add(self.j0 + 4 * v))
        })
    }

    /// Requantizes row `r`'s four column vectors and stores the tile's columns.
    ///
    /// # Safety
    ///
    /// `r` is a row of the tile; C's row is the caller's to write.
    #[inline(always)]
    unsafe fn store(&self, r: usize, acc: [int32x4_t; 4]) {
        // Safety: rq is padded past j0 + 16; C's columns j0 .. j0 + cols of the row exist.
        unsafe {
            let add = vdupq_n_s32(self.terms[r]);
            let rq = self.job.rq;
            let out: [int32x4_t; 4] = std::array::from_fn(|v| {
                Rq4::load(rq, self.j0 + 4 * v).apply(vaddq_s32(acc[v], add))
            });
            let c = self.job.c_at(self.i + r, self.j0);
            store_bytes(narrow8(out[0], out[1]), self.cols.min(8), c);
            if self.cols > 8 {
                store_bytes(narrow8(out[2], out[3]), self.cols - 8, c.add(8));
            }
        }
    }

    /// Quads in groups of 16 bytes: `(groups, quads in the last partial group)`.
    fn groups(&self) -> (usize, usize) {
        let k = self.job.b.k;
        (k / 16, (k % 16).div_ceil(4))
    }
}

/// `$quad::<L, R>(&mut acc, &a, bp)` over every quad of the tile's K: four per group of 16
/// bytes of A (lanes 0–3 of its registers), then the quads of the last partial group.
macro_rules! quads {
    ($quad:ident, $t:expr, $acc:ident, $r:ident) => {{
        let (full, rest) = $t.groups();
        for g in 0..full {
            let a: [int8x16_t; $r] = std::array::from_fn(|r| $t.a16(r, g));
            let bp = $t.bp.add(4 * g * NR * 4);
            $quad::<0, $r>(&mut $acc, &a, bp);
            $quad::<1, $r>(&mut $acc, &a, bp.add(NR * 4));
            $quad::<2, $r>(&mut $acc, &a, bp.add(2 * NR * 4));
            $quad::<3, $r>(&mut $acc, &a, bp.add(3 * NR * 4));
        }
        if rest > 0 {
            let a: [int8x16_t; $r] = std::array::from_fn(|r| $t.a16(r, full));
            let bp = $t.bp.add(4 * full * NR * 4);
            $quad::<0, $r>(&mut $acc, &a, bp);
            if rest > 1 {
                $quad::<1, $r>(&mut $acc, &a, bp.add(NR * 4));
            }
            if rest > 2 {
                $quad::<2, $r>(&mut $acc, &a, bp.add(2 * NR * 4));
            }
        }
    }};
}

/// `sdot acc.4s, b.16b, a.4b[L]`.
#[inline(always)]
unsafe fn sdot<const L: i32>(acc: int32x4_t, b: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // Safety: register-only arithmetic; the caller's function enables dotprod.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {b:v}.16b, {a:v}.4b[{l}]",
            acc = inout(vreg) acc,
            b = in(vreg) b,
            a = in(vreg) a,
            l = const L,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// Quad `L` of A's registers against the quad of B at `bp`.
#[inline(always)]
unsafe fn dot_quad<const L: i32, const R: usize>(
    acc: &mut [[int32x4_t; 4]; R],
    a: &[int8x16_t; R],
    bp: *const i8,
) {
    // Safety: the quad's 64 bytes are inside the packed panel.
    unsafe {
        let b: [int8x16_t; 4] = std::array::from_fn(|v| vld1q_s8(bp.add(16 * v)));
        for r in 0..R {
            for v in 0..4 {
                acc[r][v] = sdot::<L>(acc[r][v], b[v], a[r]);
            }
        }
    }
}

#[target_feature(enable = "dotprod")]
unsafe fn dot_tile<const R: usize>(t: &Tile) {
    let mut acc = [t.xor_sums(); R];
    // Safety: quads below ⌈k/4⌉ are packed; rows of the tile exist.
    unsafe {
        quads!(dot_quad, t, acc, R);
        for (r, acc) in acc.into_iter().enumerate() {
            t.store(r, acc);
        }
    }
}

/// Quad `L` of A's registers against the quad of B at `bp`, as pair sums.
#[inline(always)]
unsafe fn mull_quad<const L: i32, const R: usize>(
    acc: &mut [[int32x4_t; 8]; R],
    a: &[int8x16_t; R],
    bp: *const i8,
) {
    // Safety: the quad's 64 bytes are inside the packed panel.
    unsafe {
        let b: [int8x16_t; 4] = std::array::from_fn(|v| vld1q_s8(bp.add(16 * v)));
        for r in 0..R {
            let q = vreinterpretq_s8_s32(vdupq_laneq_s32::<L>(vreinterpretq_s32_s8(a[r])));
            for v in 0..4 {
                let lo = vmull_s8(vget_low_s8(b[v]), vget_low_s8(q));
                let hi = vmull_high_s8(b[v], q);
                acc[r][2 * v] = vpadalq_s16(acc[r][2 * v], lo);
                acc[r][2 * v + 1] = vpadalq_s16(acc[r][2 * v + 1], hi);
            }
        }
    }
}

unsafe fn mull_tile<const R: usize>(t: &Tile) {
    // Safety: NEON is part of every aarch64 CPU; quads below ⌈k/4⌉ are packed; rows of the
    // tile exist.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 8]; R];
        quads!(mull_quad, t, acc, R);
        let sums = t.xor_sums();
        for (r, acc) in acc.into_iter().enumerate() {
            let cols: [int32x4_t; 4] =
                std::array::from_fn(|v| vaddq_s32(sums[v], vpaddq_s32(acc[2 * v], acc[2 * v + 1])));
            t.store(r, cols);
        }
    }
}

/// `usmmla acc.4s, a.16b, b.16b`: `acc[2i + j] += Σ_8 a[8i + t]·b[8j + t]`, a unsigned.
#[inline(always)]
unsafe fn usmmla(acc: int32x4_t, a: uint8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // Safety: register-only arithmetic; the caller's function enables i8mm.
    unsafe {
        asm!(
            "usmmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `P` row pairs (`rows` real rows, `2P − 1` or `2P`) × 16 columns with `usmmla`.
#[target_feature(enable = "i8mm")]
unsafe fn mmla_tile<const P: usize>(t: &Tile, rows: usize) {
    let k = t.job.b.k;
    // The rows' starts; a row past the tile's repeats the last real one (computed, never
    // stored), so the loop loads without asking.
    let rows_at: [*const u8; 4] =
        std::array::from_fn(|r| t.job.a.wrapping_add((t.i + r.min(rows - 1)) * t.job.lda));
    let (full, octets) = (k / 8, k.div_ceil(8));
    // Safety: the octets below ⌈k/8⌉ of the tile's 8 column pairs are packed; whole 8-byte
    // loads of A only below k / 8, the last partial octet through a buffer.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); PAIRS / 2]; P];
        let step = |acc: &mut [[int32x4_t; PAIRS / 2]; P], o: usize, a: [uint8x16_t; P]| {
            let bp = t.bp.add(o * PAIRS * 16);
            let b: [int8x16_t; PAIRS / 2] = std::array::from_fn(|c| vld1q_s8(bp.add(16 * c)));
            for (acc, a) in acc.iter_mut().zip(a) {
                for (acc, b) in acc.iter_mut().zip(b) {
                    *acc = usmmla(*acc, a, b);
                }
            }
        };
        for o in 0..full {
            let a = std::array::from_fn(|rp| {
                vcombine_u8(
                    vld1_u8(rows_at[2 * rp].add(8 * o)),
                    vld1_u8(rows_at[2 * rp + 1].add(8 * o)),
                )
            });
            step(&mut acc, o, a);
        }
        if octets > full {
            let tail = |r: usize| {
                let mut buf = [0u8; 8];
                std::ptr::copy_nonoverlapping(rows_at[r].add(8 * full), buf.as_mut_ptr(), k % 8);
                vld1_u8(buf.as_ptr())
            };
            let a = std::array::from_fn(|rp| vcombine_u8(tail(2 * rp), tail(2 * rp + 1)));
            step(&mut acc, full, a);
        }
        // acc[rp][c] holds rows 2rp, 2rp + 1 × columns 2c, 2c + 1; rows come out of the
        // 64-bit halves of two neighbouring pairs.
        for (rp, acc) in acc.iter().enumerate() {
            let pairs = acc.map(|v| vreinterpretq_s64_s32(v));
            for r in 0..2 {
                if 2 * rp + r >= rows {
                    break;
                }
                let cols: [int32x4_t; 4] = std::array::from_fn(|v| {
                    let (x, y) = (pairs[2 * v], pairs[2 * v + 1]);
                    vreinterpretq_s32_s64(match r {
                        0 => vzip1q_s64(x, y),
                        _ => vzip2q_s64(x, y),
                    })
                });
                t.store(2 * rp + r, cols);
            }
        }
    }
}
