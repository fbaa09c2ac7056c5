//! A small f32 vector abstraction, so that each kernel is written once and compiled for
//! every instruction set.
//!
//! A kernel is a generic `#[inline(always)]` function over [`SimdF32`]. A thin wrapper per
//! instruction set, marked `#[target_feature(enable = …)]`, calls it with that set's token;
//! the wrapper is what the dispatcher calls after [`crate::Isa::detect`] said the CPU has the
//! features. The tokens are zero-sized and only built by those wrappers.

/// Vector operations on `LANES` f32 values.
///
/// # Safety
///
/// Implementations use instructions of one instruction set. Callers must only call the
/// methods from code running on a CPU that supports it (inside a `#[target_feature]`
/// function of that set, reached after run-time detection). Pointer arguments must be valid
/// for `LANES` f32 values (or `n` values for the `_partial` forms).
// Every method shares the contract stated above, so the methods carry no `# Safety` of their own.
#[allow(clippy::missing_safety_doc)]
pub unsafe trait SimdF32: Copy {
    /// Number of f32 lanes.
    const LANES: usize;
    /// The vector register type.
    type V: Copy;

    /// All lanes zero.
    unsafe fn zero(self) -> Self::V;
    /// All lanes `x`.
    unsafe fn splat(self, x: f32) -> Self::V;
    /// Loads `LANES` values (unaligned).
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// Stores `LANES` values (unaligned).
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// Loads the first `n < LANES` values, the other lanes zero.
    unsafe fn load_partial(self, p: *const f32, n: usize) -> Self::V;
    /// Stores the first `n < LANES` lanes.
    unsafe fn store_partial(self, p: *mut f32, v: Self::V, n: usize);
    /// `a · b + c`, fused where the instruction set has FMA.
    unsafe fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a + b`.
    unsafe fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b`.
    unsafe fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise maximum.
    unsafe fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise minimum.
    unsafe fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// Sum of all lanes.
    unsafe fn reduce_sum(self, v: Self::V) -> f32;
    /// `d` where `lo < a < hi`, else 0, lane by lane (the derivative mask of a clamp).
    unsafe fn keep_inside(self, a: Self::V, lo: Self::V, hi: Self::V, d: Self::V) -> Self::V;
    /// Hints the cache line holding `p` into L1 (no effect where unsupported). Never faults.
    #[inline(always)]
    unsafe fn prefetch(self, _p: *const f32) {}
}

/// One lane, portable Rust. Used by the scalar variants (and as a test of the kernels' logic).
#[derive(Clone, Copy, Debug)]
pub struct Scalar;

// Safety: plain Rust, valid on every CPU.
unsafe impl SimdF32 for Scalar {
    const LANES: usize = 1;
    type V = f32;
    #[inline(always)]
    unsafe fn zero(self) -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn splat(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> f32 {
        // Safety: the caller guarantees p is valid for one f32.
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: f32) {
        // Safety: the caller guarantees p is valid for one f32.
        unsafe { *p = v }
    }
    #[inline(always)]
    unsafe fn load_partial(self, _p: *const f32, _n: usize) -> f32 {
        // n < LANES = 1, so n = 0: nothing to load.
        0.0
    }
    #[inline(always)]
    unsafe fn store_partial(self, _p: *mut f32, _v: f32, _n: usize) {}
    #[inline(always)]
    unsafe fn fma(self, a: f32, b: f32, c: f32) -> f32 {
        // Not `mul_add`: without hardware FMA it is a slow library call.
        a * b + c
    }
    #[inline(always)]
    unsafe fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn max(self, a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    unsafe fn min(self, a: f32, b: f32) -> f32 {
        a.min(b)
    }
    #[inline(always)]
    unsafe fn reduce_sum(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn keep_inside(self, a: f32, lo: f32, hi: f32, d: f32) -> f32 {
        if a > lo && a < hi {
            d
        } else {
            0.0
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2Fma, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::SimdF32;
    use std::arch::x86_64::*;

    /// AVX2 + FMA3, 8 lanes.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2Fma;

    /// Lane mask for the first `n` of 8 lanes (AVX2 has no mask registers).
    #[inline(always)]
    unsafe fn mask8(n: usize) -> __m256i {
        const IDX: [i32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
        // Safety: AVX2 is enabled in every caller (see the trait's safety contract).
        unsafe {
            let idx = _mm256_loadu_si256(IDX.as_ptr().cast());
            _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
        }
    }

    // Safety: every method uses AVX, AVX2 or FMA instructions only; the trait's contract makes
    // callers run them on CPUs with those features.
    unsafe impl SimdF32 for Avx2Fma {
        const LANES: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn zero(self) -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(self, x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_partial(self, p: *const f32, n: usize) -> __m256 {
            unsafe { _mm256_maskload_ps(p, mask8(n)) }
        }
        #[inline(always)]
        unsafe fn store_partial(self, p: *mut f32, v: __m256, n: usize) {
            unsafe { _mm256_maskstore_ps(p, mask8(n), v) }
        }
        #[inline(always)]
        unsafe fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn min(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn reduce_sum(self, v: __m256) -> f32 {
            unsafe {
                let lo = _mm256_castps256_ps128(v);
                let hi = _mm256_extractf128_ps(v, 1);
                let s = _mm_add_ps(lo, hi);
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        unsafe fn prefetch(self, p: *const f32) {
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
        }
        #[inline(always)]
        unsafe fn keep_inside(self, a: __m256, lo: __m256, hi: __m256, d: __m256) -> __m256 {
            unsafe {
                let inside = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(a, lo),
                    _mm256_cmp_ps::<_CMP_LT_OQ>(a, hi),
                );
                _mm256_and_ps(inside, d)
            }
        }
    }

    /// AVX-512 F, 16 lanes.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx512;

    #[inline(always)]
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    // Safety: every method uses AVX-512 F instructions only; the trait's contract makes callers
    // run them on CPUs with that feature.
    unsafe impl SimdF32 for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn zero(self) -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(self, x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_partial(self, p: *const f32, n: usize) -> __m512 {
            unsafe { _mm512_maskz_loadu_ps(mask16(n), p) }
        }
        #[inline(always)]
        unsafe fn store_partial(self, p: *mut f32, v: __m512, n: usize) {
            unsafe { _mm512_mask_storeu_ps(p, mask16(n), v) }
        }
        #[inline(always)]
        unsafe fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn min(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_min_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn reduce_sum(self, v: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(v) }
        }
        #[inline(always)]
        unsafe fn keep_inside(self, a: __m512, lo: __m512, hi: __m512, d: __m512) -> __m512 {
            unsafe {
                let inside = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, lo)
                    & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, hi);
                _mm512_maskz_mov_ps(inside, d)
            }
        }
        #[inline(always)]
        unsafe fn prefetch(self, p: *const f32) {
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub use arm::Neon;

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::SimdF32;
    use std::arch::aarch64::*;

    /// aarch64 Advanced SIMD, 4 lanes.
    #[derive(Clone, Copy, Debug)]
    pub struct Neon;

    // Safety: NEON is part of the aarch64 baseline.
    unsafe impl SimdF32 for Neon {
        const LANES: usize = 4;
        type V = float32x4_t;
        #[inline(always)]
        unsafe fn zero(self) -> float32x4_t {
            unsafe { vdupq_n_f32(0.0) }
        }
        #[inline(always)]
        unsafe fn splat(self, x: f32) -> float32x4_t {
            unsafe { vdupq_n_f32(x) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> float32x4_t {
            unsafe { vld1q_f32(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: float32x4_t) {
            unsafe { vst1q_f32(p, v) }
        }
        #[inline(always)]
        unsafe fn load_partial(self, p: *const f32, n: usize) -> float32x4_t {
            let mut tmp = [0.0f32; 4];
            unsafe {
                std::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), n);
                vld1q_f32(tmp.as_ptr())
            }
        }
        #[inline(always)]
        unsafe fn store_partial(self, p: *mut f32, v: float32x4_t, n: usize) {
            let mut tmp = [0.0f32; 4];
            unsafe {
                vst1q_f32(tmp.as_mut_ptr(), v);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), p, n);
            }
        }
        #[inline(always)]
        unsafe fn fma(self, a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            unsafe { vfmaq_f32(c, a, b) }
        }
        #[inline(always)]
        unsafe fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            unsafe { vaddq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            unsafe { vmulq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn max(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            unsafe { vmaxq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn min(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            unsafe { vminq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn reduce_sum(self, v: float32x4_t) -> f32 {
            unsafe { vaddvq_f32(v) }
        }
        #[inline(always)]
        unsafe fn keep_inside(
            self,
            a: float32x4_t,
            lo: float32x4_t,
            hi: float32x4_t,
            d: float32x4_t,
        ) -> float32x4_t {
            unsafe {
                let inside = vandq_u32(vcgtq_f32(a, lo), vcltq_f32(a, hi));
                vreinterpretq_f32_u32(vandq_u32(inside, vreinterpretq_u32_f32(d)))
            }
        }
    }
}
