//! NEON requantization, four channels to a vector: TFLite's exact form, or XNNPACK's
//! single-precision one (`fcvtns` rounds as `cvtps2dq` does).
//!
//! `sqrdmulh` is gemmlowp's `SaturatingRoundingDoublingHighMul` bit for bit: it rounds
//! `(2ab + 2^31) >> 32`, i.e. `⌊(ab + 2^30) / 2^31⌋`, and for a negative product that floor
//! equals the scalar form's `trunc((ab + 1 − 2^30) / 2^31)` (both are `−⌈(|ab| − 2^30) /
//! 2^31⌉`); the one overflow, `i32::MIN²`, saturates to `i32::MAX` in both. Rounding division
//! by `2^e` is gemmlowp's NEON form: one is taken off negative values when `e > 0`
//! (saturating), then `srshl` by `−e` rounds half up with an exact intermediate — together
//! ties away from zero, as [`super::rounding_divide_by_pot`].

use std::arch::aarch64::*;

use super::Requant;

/// The requantization constants of four channels.
#[derive(Clone, Copy)]
pub(crate) struct Rq4 {
    bias: int32x4_t,
    m: int32x4_t,
    l: int32x4_t,
    /// `−e`, the right shift as `srshl` takes it.
    r: int32x4_t,
    zp: int32x4_t,
    lo: int32x4_t,
    hi: int32x4_t,
    /// XNNPACK's form: the scales and `max − zp` in single precision.
    fp32: bool,
    scale: float32x4_t,
    cap: float32x4_t,
}

impl Rq4 {
    /// Channels `j .. j + 4` of `rq` (padded past its end).
    ///
    /// # Safety
    ///
    /// `j + 4` must not pass `rq`'s padded length (a multiple of 16 channels).
    #[inline(always)]
    pub(crate) unsafe fn load(rq: &Requant, j: usize) -> Rq4 {
        debug_assert!(j + 4 <= rq.bias.len());
        // Safety: the vectors are padded to a multiple of 16 ≥ j + 4 (the caller's promise).
        unsafe {
            Rq4 {
                bias: vld1q_s32(rq.bias.as_ptr().add(j)),
                m: vld1q_s32(rq.multiplier.as_ptr().add(j)),
                l: vld1q_s32(rq.left.as_ptr().add(j)),
                r: vnegq_s32(vld1q_s32(rq.right.as_ptr().add(j))),
                zp: vdupq_n_s32(rq.zero_point),
                lo: vdupq_n_s32(rq.min),
                hi: vdupq_n_s32(rq.max),
                fp32: rq.fp32,
                scale: vld1q_f32(rq.scale.as_ptr().add(j)),
                cap: vdupq_n_f32((rq.max - rq.zero_point) as f32),
            }
        }
    }

    /// `clamp(RoundingDivideByPOT(SRDHM((acc + bias) << l, m), e) + zp, min, max)`.
    #[inline(always)]
    pub(crate) fn apply(&self, acc: int32x4_t) -> int32x4_t {
        // Safety: NEON is part of every aarch64 CPU.
        unsafe {
            if self.fp32 {
                // `fcvtns`: nearest, ties to even, saturating — `cvtps2dq` in range.
                let f = vmulq_f32(vcvtq_f32_s32(vaddq_s32(acc, self.bias)), self.scale);
                let v = vaddq_s32(vcvtnq_s32_f32(vminq_f32(f, self.cap)), self.zp);
                return vminq_s32(vmaxq_s32(v, self.lo), self.hi);
            }
            let x = vshlq_s32(vaddq_s32(acc, self.bias), self.l);
            let x = vqrdmulhq_s32(x, self.m);
            // −1 for negative x where e > 0 (−e has its sign bit set exactly then).
            let fixup = vshrq_n_s32::<31>(vandq_s32(x, self.r));
            let x = vrshlq_s32(vqaddq_s32(x, fixup), self.r);
            vminq_s32(vmaxq_s32(vaddq_s32(x, self.zp), self.lo), self.hi)
        }
    }
}

/// Eight clamped values (each in 0..=255) as bytes.
#[inline(always)]
pub(crate) fn narrow8(lo: int32x4_t, hi: int32x4_t) -> uint8x8_t {
    // Safety: NEON is part of every aarch64 CPU.
    unsafe { vqmovun_s16(vcombine_s16(vmovn_s32(lo), vmovn_s32(hi))) }
}

/// Writes the first `n ≤ 8` bytes of `v` to `out`.
///
/// # Safety
///
/// `out` must be valid for writes of `n` bytes.
#[inline(always)]
pub(crate) unsafe fn store_bytes(v: uint8x8_t, n: usize, out: *mut u8) {
    // Safety: a full store when 8 bytes are the caller's, else through a buffer.
    unsafe {
        if n == 8 {
            vst1_u8(out, v);
        } else {
            let mut buf = [0u8; 8];
            vst1_u8(buf.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(buf.as_ptr(), out, n);
        }
    }
}

/// [`Requant::row`] for `acc.len()` channels from `j0` (a multiple of 4).
///
/// # Safety
///
/// `out` must be valid for writes of `acc.len()` bytes and `j0 + acc.len() ≤ rq.len()`.
pub(crate) unsafe fn requant_row(rq: &Requant, acc: &[i32], add: i32, j0: usize, out: *mut u8) {
    let n = acc.len();
    // Safety: loads read acc (or a copy of its tail) and rq's padded vectors up to
    // j0 + ⌈n/8⌉·8 ≤ the padding (j0 a multiple of 4, padding a multiple of 16); stores write
    // out's n bytes.
    unsafe {
        let add = vdupq_n_s32(add);
        let mut j = 0;
        while j < n {
            let take = (n - j).min(8);
            let mut buf = [0i32; 8];
            buf[..take].copy_from_slice(&acc[j..j + take]);
            let a0 = vaddq_s32(vld1q_s32(buf.as_ptr()), add);
            let a1 = vaddq_s32(vld1q_s32(buf.as_ptr().add(4)), add);
            let r0 = Rq4::load(rq, j0 + j).apply(a0);
            let r1 = Rq4::load(rq, j0 + j + 4).apply(a1);
            store_bytes(narrow8(r0, r1), take, out.add(j));
            j += take;
        }
    }
}
