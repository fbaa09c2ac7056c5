//! AVX-512 requantization. TFLite's exact form: the Q31 products are formed in 64-bit lanes
//! (even and odd i32 lanes separately) and rounded to 32 bits, then divided by the power of
//! two with gemmlowp's rounding. Or XNNPACK's single-precision form ([`Requant::fp32`]).

use std::arch::x86_64::*;

use super::Requant;

/// [`Rq16::mode`]: TFLite's arithmetic, any constants.
pub(crate) const GENERAL: u8 = 0;
/// [`Rq16::mode`]: XNNPACK's single-precision form.
pub(crate) const FP32: u8 = 1;
/// [`Rq16::mode`]: TFLite's arithmetic for ReLU layers that shift right.
pub(crate) const EXACT_RELU: u8 = 2;
/// [`Rq16::mode`]: [`EXACT_RELU`] with the zero point folded into the rounding constants
/// (all but the layers whose shifts are too large to hold it): one add less.
pub(crate) const EXACT_RELU_FOLDED: u8 = 3;

/// The requantization constants of 16 channels, loaded once for many pixels.
#[derive(Clone, Copy)]
pub(crate) struct Rq16 {
    bias: __m512i,
    m: __m512i,
    m_odd: __m512i,
    l: __m512i,
    zp: __m512i,
    lo: __m512i,
    hi: __m512i,
    any_left: bool,
    c_even: __m512i,
    c_odd: __m512i,
    s_even: __m512i,
    s_odd: __m512i,
    /// Lanes (even, odd) whose exponent is above 0: they take the negative correction.
    k_even: __mmask8,
    k_odd: __mmask8,
    zp_folded: bool,
    /// Whether the lower bound is at or above the zero point (ReLU, ReLU6): a negative
    /// product then ends at the bound whichever way its tie rounds, so the correction of
    /// [`round_shift`] is skipped.
    floor: bool,
    /// Every channel shifts right: the odd lanes shift by `s − 32` (`s_odd_hi`), which
    /// leaves the result in their high halves, where the blend takes it.
    odd_hi: bool,
    s_odd_hi: __m512i,
    /// The zero point where `c` does not hold it, else 0 ([`EXACT_RELU`] adds it always).
    zp_add: __m512i,
    /// Whether the upper bound is 255 (the narrowing store saturates there).
    top: bool,
    /// XNNPACK's form: the scales and `max − zp` in single precision.
    fp32: bool,
    scale: __m512,
    cap: __m512,
}

impl Rq16 {
    /// Channels `j .. j + 16` of `rq` (padded past its end).
    #[inline(always)]
    pub(crate) unsafe fn load(rq: &Requant, j: usize) -> Rq16 {
        let v = |x: &[i32]| unsafe { _mm512_loadu_si512(x.as_ptr().add(j).cast()) };
        unsafe {
            Rq16 {
                bias: v(&rq.bias),
                m: v(&rq.multiplier),
                m_odd: v(&rq.mult_odd),
                l: v(&rq.left),
                zp: _mm512_set1_epi32(rq.zero_point),
                lo: _mm512_set1_epi32(rq.min),
                hi: _mm512_set1_epi32(rq.max),
                any_left: rq.any_left,
                c_even: _mm512_loadu_si512(rq.c_even.as_ptr().add(j / 2).cast()),
                c_odd: _mm512_loadu_si512(rq.c_odd.as_ptr().add(j / 2).cast()),
                s_even: _mm512_loadu_si512(rq.s_even.as_ptr().add(j / 2).cast()),
                s_odd: _mm512_loadu_si512(rq.s_odd.as_ptr().add(j / 2).cast()),
                k_even: _mm512_cmpgt_epi64_mask(
                    _mm512_loadu_si512(rq.s_even.as_ptr().add(j / 2).cast()),
                    _mm512_set1_epi64(31),
                ),
                k_odd: _mm512_cmpgt_epi64_mask(
                    _mm512_loadu_si512(rq.s_odd.as_ptr().add(j / 2).cast()),
                    _mm512_set1_epi64(31),
                ),
                zp_folded: rq.zp_folded,
                floor: rq.min >= rq.zero_point,
                odd_hi: rq.all_right,
                zp_add: _mm512_set1_epi32(match rq.zp_folded {
                    true => 0,
                    false => rq.zero_point,
                }),
                s_odd_hi: _mm512_sub_epi64(
                    _mm512_loadu_si512(rq.s_odd.as_ptr().add(j / 2).cast()),
                    _mm512_set1_epi64(32),
                ),
                top: rq.max == 255,
                fp32: rq.fp32,
                scale: _mm512_loadu_ps(rq.scale.as_ptr().add(j)),
                cap: _mm512_set1_ps((rq.max - rq.zero_point) as f32),
            }
        }
    }

    /// The 16 channels' biases.
    #[inline(always)]
    pub(crate) fn bias(&self) -> __m512i {
        self.bias
    }

    /// Channels 0–7's constants in both halves: for kernels that hold two pixels of an
    /// 8-channel layer in one vector.
    #[inline(always)]
    pub(crate) unsafe fn low_half_twice(self) -> Rq16 {
        unsafe {
            let (s_even, s_odd) = (dup(self.s_even), dup(self.s_odd));
            Rq16 {
                bias: dup(self.bias),
                m: dup(self.m),
                m_odd: dup(self.m_odd),
                l: dup(self.l),
                c_even: dup(self.c_even),
                c_odd: dup(self.c_odd),
                s_even,
                s_odd,
                s_odd_hi: dup(self.s_odd_hi),
                k_even: _mm512_cmpgt_epi64_mask(s_even, _mm512_set1_epi64(31)),
                k_odd: _mm512_cmpgt_epi64_mask(s_odd, _mm512_set1_epi64(31)),
                scale: _mm512_castsi512_ps(dup(_mm512_castps_si512(self.scale))),
                ..self
            }
        }
    }

    /// `max(RoundingDivideByPOT(SRDHM((acc + bias) << l, m), e) + zp, min)` (the upper
    /// bound is applied by [`Rq16::store`]).
    ///
    /// With `m` in `[2^30, 2^31)` the doubling high multiply's nudge-and-truncate equals
    /// `q = floor((p + 2^30) / 2^31)` for the 64-bit product `p` (its saturating case
    /// needs `m = −2^31`), and the divide by `2^e` rounding half away from zero is
    /// `floor((q + 2^(e−1) − [q < 0]) / 2^e)`; nested floors of integer sums merge, so
    /// `r = floor((p + 2^30 + 2^(30+e) − [p < −2^30]·2^31) / 2^(31+e))`: one add, one
    /// masked correction and one shift per 64-bit lane (see [`Requant`]'s `c_even`). The
    /// even lanes' results sit in the low halves, the odd lanes' are shifted up.
    #[inline(always)]
    pub(crate) unsafe fn apply(&self, acc: __m512i) -> __m512i {
        unsafe { self.apply_biased(_mm512_add_epi32(acc, self.bias)) }
    }

    /// [`Rq16::apply`] of a sum that already holds the bias.
    #[inline(always)]
    unsafe fn apply_biased(&self, x: __m512i) -> __m512i {
        unsafe {
            let mut x = x;
            if self.fp32 {
                // Rounded to nearest, ties to even (MXCSR's default mode).
                let f = _mm512_mul_ps(_mm512_cvtepi32_ps(x), self.scale);
                let v = _mm512_cvtps_epi32(_mm512_min_ps(f, self.cap));
                return _mm512_max_epi32(_mm512_add_epi32(v, self.zp), self.lo);
            }
            if self.any_left {
                x = _mm512_sllv_epi32(x, self.l);
            }
            let pe = _mm512_mul_epi32(x, self.m);
            let po = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), self.m_odd);
            // No negative correction where the lower bound swallows it (see `floor`).
            let (k_even, k_odd) = match self.floor {
                true => (0, 0),
                false => (self.k_even, self.k_odd),
            };
            let re = round_shift(pe, self.c_even, k_even, self.s_even);
            let mut v = match self.odd_hi {
                true => {
                    let ro = round_shift(po, self.c_odd, k_odd, self.s_odd_hi);
                    _mm512_mask_blend_epi32(0xaaaa, re, ro)
                }
                false => {
                    let ro = round_shift(po, self.c_odd, k_odd, self.s_odd);
                    _mm512_mask_blend_epi32(0xaaaa, re, _mm512_slli_epi64(ro, 32))
                }
            };
            if !self.zp_folded {
                v = _mm512_add_epi32(v, self.zp);
            }
            _mm512_max_epi32(v, self.lo)
        }
    }

    /// Which of [`Rq16::store_biased`]'s forms these constants take: [`FP32`], [`EXACT_RELU`]
    /// (TFLite's arithmetic with every channel shifting right, no left shift and a lower
    /// bound at or above the zero point: a MobileNet's ReLU6 layers) or [`GENERAL`]. Kernels choose once per tile, outside their store loops, so
    /// the loops carry no branches.
    #[inline(always)]
    pub(crate) fn mode(&self) -> u8 {
        match self.fp32 {
            true => FP32,
            false if self.floor && self.odd_hi && !self.any_left && self.zp_folded => {
                EXACT_RELU_FOLDED
            }
            false if self.floor && self.odd_hi && !self.any_left => EXACT_RELU,
            false => GENERAL,
        }
    }

    /// [`Rq16::store`] for constants of mode `M` ([`Rq16::mode`]), of a sum that already
    /// holds the bias (kernels start their accumulators from it: one add less per vector).
    #[inline(always)]
    pub(crate) unsafe fn store_biased<const M: u8>(&self, x: __m512i, n: usize, out: *mut u8) {
        unsafe {
            let v = match M {
                FP32 => {
                    let f = _mm512_mul_ps(_mm512_cvtepi32_ps(x), self.scale);
                    let v = _mm512_cvtps_epi32(_mm512_min_ps(f, self.cap));
                    _mm512_max_epi32(_mm512_add_epi32(v, self.zp), self.lo)
                }
                EXACT_RELU | EXACT_RELU_FOLDED => {
                    let pe = _mm512_mul_epi32(x, self.m);
                    let po = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), self.m_odd);
                    let re = _mm512_srav_epi64(_mm512_add_epi64(pe, self.c_even), self.s_even);
                    let ro = _mm512_srav_epi64(_mm512_add_epi64(po, self.c_odd), self.s_odd_hi);
                    let v = _mm512_mask_blend_epi32(0xaaaa, re, ro);
                    let v = match M {
                        EXACT_RELU => _mm512_add_epi32(v, self.zp_add),
                        _ => v,
                    };
                    _mm512_max_epi32(v, self.lo)
                }
                _ => self.apply_biased(x),
            };
            self.narrow(v, n, out)
        }
    }

    /// [`Rq16::apply`] and the store of `n ≤ 16` bytes.
    #[inline(always)]
    pub(crate) unsafe fn store(&self, acc: __m512i, n: usize, out: *mut u8) {
        unsafe { self.narrow(self.apply(acc), n, out) }
    }

    /// The store of `n ≤ 16` requantized values as bytes.
    #[inline(always)]
    unsafe fn narrow(&self, v: __m512i, n: usize, out: *mut u8) {
        unsafe {
            // Clamped below by `apply`; above by the unsigned saturating narrow when the
            // bound is 255 (ReLU and ReLU6 layers whose range fits the bytes).
            let mask = ((1u32 << n) - 1) as u16;
            match (self.top, n) {
                (true, 16) => _mm_storeu_si128(out.cast(), _mm512_cvtusepi32_epi8(v)),
                (true, _) => _mm512_mask_cvtusepi32_storeu_epi8(out.cast(), mask, v),
                (false, 16) => _mm_storeu_si128(
                    out.cast(),
                    _mm512_cvtepi32_epi8(_mm512_min_epi32(v, self.hi)),
                ),
                (false, _) => {
                    _mm512_mask_cvtepi32_storeu_epi8(out.cast(), mask, _mm512_min_epi32(v, self.hi))
                }
            }
        }
    }
}

/// A register tile's `R` rows of one or two halves of 16 columns (`H`): `acc0[i]` (and
/// `acc1[i]`) plus `add[i]`, requantized with the constants of columns `j0 ..` and stored at
/// `out + i·ldc` (`cols` bytes). The form is chosen once ([`Rq16::mode`]), outside the loop,
/// which then carries no branches.
///
/// (Starting the accumulators from the bias and the row term instead, to save the two adds
/// here, made the 12544×32→64 GEMM 5% slower: measured, not understood.)
///
/// # Safety
///
/// AVX-512 F/BW/VL; `add` holds R values; the rows' `cols` bytes are the caller's to write.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn store_rows<const R: usize, const H: usize>(
    rq: &Requant,
    j0: usize,
    acc0: &[__m512i; R],
    acc1: &[__m512i; R],
    add: &[i32],
    out: *mut u8,
    ldc: usize,
    cols: usize,
) {
    unsafe {
        let r0 = Rq16::load(rq, j0);
        // Not `then(|| …)`: a closure would not inherit the caller's target features.
        let r1 = if H == 2 {
            Some(Rq16::load(rq, j0 + 16))
        } else {
            None
        };
        let r1 = r1.as_ref();
        let t = (acc0, acc1, add, out, ldc, cols);
        match r0.mode() {
            FP32 => rows_as::<R, H, FP32>(&r0, r1, t),
            EXACT_RELU_FOLDED => rows_as::<R, H, EXACT_RELU_FOLDED>(&r0, r1, t),
            EXACT_RELU => rows_as::<R, H, EXACT_RELU>(&r0, r1, t),
            _ => rows_as::<R, H, GENERAL>(&r0, r1, t),
        }
    }
}

/// [`store_rows`] in form `M`.
#[inline(always)]
#[allow(clippy::type_complexity)]
unsafe fn rows_as<const R: usize, const H: usize, const M: u8>(
    r0: &Rq16,
    r1: Option<&Rq16>,
    (acc0, acc1, add, out, ldc, cols): (
        &[__m512i; R],
        &[__m512i; R],
        &[i32],
        *mut u8,
        usize,
        usize,
    ),
) {
    unsafe {
        for i in 0..R {
            let a = _mm512_set1_epi32(add[i]);
            let row = out.add(i * ldc);
            let x = _mm512_add_epi32(_mm512_add_epi32(acc0[i], a), r0.bias);
            r0.store_biased::<M>(x, cols.min(16), row);
            if let (2, Some(r1)) = (H, r1) {
                let x = _mm512_add_epi32(_mm512_add_epi32(acc1[i], a), r1.bias);
                r1.store_biased::<M>(x, cols - 16, row.add(16));
            }
        }
    }
}

/// The low 256 bits of `v` in both halves (a function, not a closure: a closure would not
/// inherit the caller's target features).
#[inline(always)]
unsafe fn dup(v: __m512i) -> __m512i {
    unsafe { _mm512_shuffle_i64x2::<0b01_00_01_00>(v, v) }
}

/// One 64-bit half of [`Rq16::apply`]'s rounding: `(p + c − [p < −2^30]·2^31) >> s` per
/// lane, the correction only in the lanes of `k` (those with `e > 0`).
#[inline(always)]
unsafe fn round_shift(p: __m512i, c: __m512i, k: __mmask8, s: __m512i) -> __m512i {
    // Safety: the caller runs with AVX-512 F.
    unsafe {
        let t = _mm512_add_epi64(p, c);
        if k == 0 {
            return _mm512_srav_epi64(t, s);
        }
        let negative = _mm512_mask_cmplt_epi64_mask(k, p, _mm512_set1_epi64(-(1 << 30)));
        _mm512_srav_epi64(
            _mm512_mask_sub_epi64(t, negative, t, _mm512_set1_epi64(1 << 31)),
            s,
        )
    }
}

/// Full requantization of 16 channels starting at `j` and the store of `n ≤ 16` bytes.
#[inline(always)]
pub(crate) unsafe fn finish16(rq: &Requant, acc: __m512i, j: usize, n: usize, out: *mut u8) {
    unsafe { Rq16::load(rq, j).store(acc, n, out) }
}

/// [`Requant::row`] for AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
pub(crate) unsafe fn requant_row(
    rq: &Requant,
    acc: *const i32,
    n: usize,
    add: i32,
    j0: usize,
    out: *mut u8,
) {
    unsafe {
        let addv = _mm512_set1_epi32(add);
        let mut j = 0;
        while j < n {
            let w = (n - j).min(16);
            let a = if w == 16 {
                _mm512_loadu_si512(acc.add(j).cast())
            } else {
                _mm512_maskz_loadu_epi32(((1u32 << w) - 1) as u16, acc.add(j).cast())
            };
            finish16(rq, _mm512_add_epi32(a, addv), j0 + j, w, out.add(j));
            j += 16;
        }
    }
}
