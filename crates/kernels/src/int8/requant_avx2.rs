//! AVX2 requantization. TFLite's exact form as the AVX-512 one but without 64-bit arithmetic
//! shifts: the 64-bit sums are offset by 2^63 (unsigned from then on), shifted logically, and
//! the offset's `2^(63 − s)` taken off again. Or XNNPACK's single-precision form.

use std::arch::x86_64::*;

use super::Requant;

/// The requantization constants of 8 channels, loaded once for a tile of rows.
#[derive(Clone, Copy)]
pub(crate) struct Rq8 {
    bias: __m256i,
    m: __m256i,
    m_odd: __m256i,
    l: __m256i,
    zp: __m256i,
    lo: __m256i,
    hi: __m256i,
    any_left: bool,
    zp_folded: bool,
    /// The lower bound is at or above the zero point (ReLU): no negative correction (see
    /// [`super::x86::Rq16`]'s `floor`).
    floor: bool,
    /// `c + 2^63` of the even and odd channels (64-bit lanes).
    c_even: __m256i,
    c_odd: __m256i,
    s_even: __m256i,
    s_odd: __m256i,
    /// `2^(63 − s)`: the offset left after the shift.
    k_even: __m256i,
    k_odd: __m256i,
    /// XNNPACK's form: the scales and `max − zp` in single precision.
    fp32: bool,
    scale: __m256,
    cap: __m256,
    /// `2^31` in lanes whose exponent is above 0 (they take the negative correction).
    corr_even: __m256i,
    corr_odd: __m256i,
    /// [`EXACT_RELU`]'s constants: `c` without the offset, and `s − 32` per channel in
    /// channel order.
    exact: bool,
    c_even_plain: __m256i,
    c_odd_plain: __m256i,
    s32: __m256i,
}

/// [`Rq8::mode`]: TFLite's arithmetic, any constants.
pub(crate) const GENERAL: u8 = 0;
/// [`Rq8::mode`]: TFLite's arithmetic where every channel shifts right by at least 32 in all
/// (`e ≥ 1`), none left, and the lower bound is at or above the zero point (a MobileNet's
/// ReLU6 layers): the high halves of the rounded 64-bit sums, shifted arithmetically as 32-bit
/// lanes (`⌊t / 2^s⌋ = ⌊⌊t / 2^32⌋ / 2^(s−32)⌋`), replace the offset logical shifts; no
/// negative correction (see [`super::x86::Rq16`]'s `floor`).
pub(crate) const EXACT_RELU: u8 = 2;

impl Rq8 {
    /// Channels `j .. j + 8` of `rq` (padded past its end; `j` a multiple of 8).
    #[inline(always)]
    pub(crate) unsafe fn load(rq: &Requant, j: usize) -> Rq8 {
        unsafe {
            let v = |x: &[i32]| _mm256_loadu_si256(x.as_ptr().add(j).cast());
            if rq.fp32 {
                // XNNPACK's form reads only the bias, scales and bounds.
                let z = _mm256_setzero_si256();
                return Rq8 {
                    bias: v(&rq.bias),
                    m: z,
                    m_odd: z,
                    l: z,
                    zp: _mm256_set1_epi32(rq.zero_point),
                    lo: _mm256_set1_epi32(rq.min),
                    hi: _mm256_set1_epi32(rq.max),
                    any_left: false,
                    zp_folded: false,
                    floor: false,
                    c_even: z,
                    c_odd: z,
                    s_even: z,
                    s_odd: z,
                    k_even: z,
                    k_odd: z,
                    corr_even: z,
                    corr_odd: z,
                    exact: false,
                    c_even_plain: z,
                    c_odd_plain: z,
                    s32: z,
                    fp32: true,
                    scale: _mm256_loadu_ps(rq.scale.as_ptr().add(j)),
                    cap: _mm256_set1_ps((rq.max - rq.zero_point) as f32),
                };
            }
            let w = |x: &[i64]| _mm256_loadu_si256(x.as_ptr().add(j / 2).cast());
            let b = rq.avx2_blocks.as_ptr().add(j / 8 * 24);
            let blk = |i: usize| _mm256_loadu_si256(b.add(4 * i).cast());
            Rq8 {
                bias: v(&rq.bias),
                m: v(&rq.multiplier),
                m_odd: v(&rq.mult_odd),
                l: v(&rq.left),
                zp: _mm256_set1_epi32(rq.zero_point),
                lo: _mm256_set1_epi32(rq.min),
                hi: _mm256_set1_epi32(rq.max),
                any_left: rq.any_left,
                zp_folded: rq.zp_folded,
                floor: rq.min >= rq.zero_point,
                c_even: blk(0),
                c_odd: blk(1),
                s_even: w(&rq.s_even),
                s_odd: w(&rq.s_odd),
                k_even: blk(2),
                k_odd: blk(3),
                corr_even: blk(4),
                corr_odd: blk(5),
                exact: rq.min >= rq.zero_point && rq.all_right && !rq.any_left,
                c_even_plain: w(&rq.c_even),
                c_odd_plain: w(&rq.c_odd),
                s32: _mm256_sub_epi32(
                    _mm256_blend_epi32(
                        w(&rq.s_even),
                        _mm256_slli_epi64(w(&rq.s_odd), 32),
                        0b1010_1010,
                    ),
                    _mm256_set1_epi32(32),
                ),
                fp32: rq.fp32,
                scale: _mm256_loadu_ps(rq.scale.as_ptr().add(j)),
                cap: _mm256_set1_ps((rq.max - rq.zero_point) as f32),
            }
        }
    }

    /// The 8 output values of `acc` (bias not yet added), clamped to the bounds; the
    /// arithmetic of [`super::x86::Rq16::apply`].
    #[inline(always)]
    pub(crate) unsafe fn apply(&self, acc: __m256i) -> __m256i {
        unsafe {
            let mut x = _mm256_add_epi32(acc, self.bias);
            if self.fp32 {
                // Rounded to nearest, ties to even (MXCSR's default mode).
                let f = _mm256_mul_ps(_mm256_cvtepi32_ps(x), self.scale);
                let v = _mm256_cvtps_epi32(_mm256_min_ps(f, self.cap));
                let v = _mm256_add_epi32(v, self.zp);
                return _mm256_min_epi32(_mm256_max_epi32(v, self.lo), self.hi);
            }
            if self.any_left {
                x = _mm256_sllv_epi32(x, self.l);
            }
            let thr = _mm256_set1_epi64x(-(1 << 30));
            let floor = self.floor;
            let round = |p: __m256i, c, corr, s, k| {
                let mut t = _mm256_add_epi64(p, c);
                if !floor {
                    t = _mm256_sub_epi64(t, _mm256_and_si256(_mm256_cmpgt_epi64(thr, p), corr));
                }
                _mm256_sub_epi64(_mm256_srlv_epi64(t, s), k)
            };
            let pe = _mm256_mul_epi32(x, self.m);
            let po = _mm256_mul_epi32(_mm256_srli_epi64(x, 32), self.m_odd);
            let re = round(pe, self.c_even, self.corr_even, self.s_even, self.k_even);
            let ro = round(po, self.c_odd, self.corr_odd, self.s_odd, self.k_odd);
            let mut v = _mm256_blend_epi32(re, _mm256_slli_epi64(ro, 32), 0b1010_1010);
            if !self.zp_folded {
                v = _mm256_add_epi32(v, self.zp);
            }
            _mm256_min_epi32(_mm256_max_epi32(v, self.lo), self.hi)
        }
    }

    /// Which of [`Rq8::store_as`]'s forms these constants take ([`EXACT_RELU`] or
    /// [`GENERAL`]); kernels choose once, outside their store loops.
    #[inline(always)]
    pub(crate) fn mode(&self) -> u8 {
        match self.exact && !self.fp32 {
            true => EXACT_RELU,
            false => GENERAL,
        }
    }

    /// [`Rq8::apply`] for constants of mode `M`.
    #[inline(always)]
    pub(crate) unsafe fn apply_as<const M: u8>(&self, acc: __m256i) -> __m256i {
        unsafe {
            if M != EXACT_RELU {
                return self.apply(acc);
            }
            let x = _mm256_add_epi32(acc, self.bias);
            let pe = _mm256_mul_epi32(x, self.m);
            let po = _mm256_mul_epi32(_mm256_srli_epi64(x, 32), self.m_odd);
            let te = _mm256_add_epi64(pe, self.c_even_plain);
            let to = _mm256_add_epi64(po, self.c_odd_plain);
            let hi = _mm256_blend_epi32(_mm256_srli_epi64(te, 32), to, 0b1010_1010);
            let mut v = _mm256_srav_epi32(hi, self.s32);
            if !self.zp_folded {
                v = _mm256_add_epi32(v, self.zp);
            }
            _mm256_min_epi32(_mm256_max_epi32(v, self.lo), self.hi)
        }
    }

    /// [`Rq8::store`] for constants of mode `M` ([`Rq8::mode`]).
    #[inline(always)]
    pub(crate) unsafe fn store_as<const M: u8>(&self, acc: __m256i, n: usize, out: *mut u8) {
        unsafe { self.narrow(self.apply_as::<M>(acc), n, out) }
    }

    /// [`Rq8::apply`] and the store of the first `n ≤ 8` bytes.
    #[inline(always)]
    pub(crate) unsafe fn store(&self, acc: __m256i, n: usize, out: *mut u8) {
        unsafe { self.narrow(self.apply(acc), n, out) }
    }

    /// The store of the first `n ≤ 8` of the values `v` (bytes already).
    #[inline(always)]
    unsafe fn narrow(&self, v: __m256i, n: usize, out: *mut u8) {
        unsafe {
            // Values are bytes already: the saturating packs only narrow them.
            let w = _mm256_packus_epi32(v, v);
            let b = _mm256_packus_epi16(w, w);
            let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
            let word = _mm_cvtsi128_si64(_mm256_castsi256_si128(b));
            if n >= 8 {
                out.cast::<i64>().write_unaligned(word);
            } else {
                // A variable-length copy would be a call to memmove (5% of a small model).
                for (i, &v) in word.to_le_bytes()[..n].iter().enumerate() {
                    *out.add(i) = v;
                }
            }
        }
    }
}

/// [`Requant::row`] for AVX2, from a channel `j0` that is a multiple of 8.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn requant_row_avx2(
    rq: &Requant,
    acc: *const i32,
    n: usize,
    add: i32,
    j0: usize,
    out: *mut u8,
) {
    unsafe {
        let addv = _mm256_set1_epi32(add);
        let mut j = 0;
        while j < n {
            let w = (n - j).min(8);
            let mut lanes = [0i32; 8];
            std::ptr::copy_nonoverlapping(acc.add(j), lanes.as_mut_ptr(), w);
            let a = _mm256_loadu_si256(lanes.as_ptr().cast());
            Rq8::load(rq, j0 + j).store(_mm256_add_epi32(a, addv), w, out.add(j));
            j += 8;
        }
    }
}
