//! bf16 GEMM for inference: `C = epilogue(A · B)` with A and B rounded to bfloat16 and the
//! products summed in f32, on AVX512-BF16 (`vdpbf16ps`: 32 bf16 products per instruction, two
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
    /// A's rows rounded to bf16 pairs, per thread.
    static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `args` (B packed as bf16 pairs) on this CPU.
///
/// # Safety
///
/// The pointers in `args` cover the shapes it states; A is not transposed and no column
/// moments are asked for; the CPU has AVX512-BF16 (checked when B was packed).
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn gemm(x: &super::microkernel::Args) {
    debug_assert!(!x.a_trans && x.moments.is_null());
    let kp = x.k.div_ceil(2);
    PAIRS.with_borrow_mut(|pairs| {
        if pairs.len() < x.m * kp {
            pairs.resize(x.m * kp, 0);
        }
        // Safety: as the caller's; the buffer holds m rows of kp pairs.
        unsafe {
            avx512::round_rows(x.a, x.lda, x.m, x.k, pairs.as_mut_ptr());
            avx512::gemm(x, pairs.as_ptr(), kp);
        }
    });
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn gemm(_: &super::microkernel::Args) {
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

    /// The low `n ≤ 16` lanes.
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// Blocks of panels that fit in L2 → tiles of MR rows → panels of the block, as the f32
    /// microkernel's loops (with its split of a short last tile into two halves).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn gemm(x: &Args, pairs: *const u32, kp: usize) {
        let panels = x.n.div_ceil(NR);
        let block = (B_BLOCK_BYTES / (kp * NR * 4).max(1)).max(1);
        let b = x.b.cast::<u32>();
        // Safety: tiles stay inside C's m × n and the m × kp pairs; panel p starts at p·kp·NR.
        unsafe {
            let mut p_start = x.p0;
            while p_start < panels {
                let p_end = (p_start + block).min(panels);
                let mut i = 0;
                while i < x.m {
                    let rows = tile_rows(x.m - i, MR);
                    for p in p_start..p_end {
                        let t = Tile {
                            a: pairs.add(i * kp),
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
                        };
                        match rows {
                            12 => tile::<12>(&t),
                            11 => tile::<11>(&t),
                            10 => tile::<10>(&t),
                            9 => tile::<9>(&t),
                            8 => tile::<8>(&t),
                            7 => tile::<7>(&t),
                            6 => tile::<6>(&t),
                            5 => tile::<5>(&t),
                            4 => tile::<4>(&t),
                            3 => tile::<3>(&t),
                            2 => tile::<2>(&t),
                            _ => tile::<1>(&t),
                        }
                    }
                    i += rows;
                }
                p_start = p_end;
            }
        }
    }

    struct Tile {
        /// The tile's first row of pairs (rows `kp` apart).
        a: *const u32,
        kp: usize,
        bp: *const u32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        bias: *const f32,
        min: f32,
        max: f32,
        accumulate: bool,
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
                    let av: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*t.a.add(i * t.kp + q) as i32));
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
                _mm512_mask_storeu_ps(row, m0, v0);
                _mm512_mask_storeu_ps(row.add(16), m1, v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{gemm, gemm_cols, gemm_reference, PackedB};
    use super::*;
    use crate::testing::Rng;
    use crate::{Epilogue, Isa, IsaKind};

    /// The AVX-512 packing rounded to bf16, or `None` (with the reason printed) where the CPU
    /// has no AVX512-BF16.
    fn packed(b: &[f32], k: usize, n: usize) -> Option<PackedB> {
        let Some(isa) = Isa::of_kind(IsaKind::Avx512).filter(|_| bf16_supported()) else {
            println!("skipped: this CPU has no AVX512-BF16");
            return None;
        };
        let p = PackedB::new(isa, b, k, n).to_bf16();
        assert!(p.is_some(), "AVX512-BF16 is here, the packing must be made");
        p
    }

    fn rounded(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| bf16_to_f32(round_bf16(x))).collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties go to the even (1); a hair above
        // goes up; the odd neighbour's tie goes up to even.
        assert_eq!(bf16_to_f32(round_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(
            bf16_to_f32(round_bf16(f32::from_bits(
                (1.0f32 + 1.0 / 256.0).to_bits() + 1
            ))),
            1.0 + 1.0 / 128.0
        );
        assert_eq!(
            bf16_to_f32(round_bf16(1.0 + 3.0 / 256.0)),
            1.0 + 2.0 / 128.0
        );
        assert_eq!(bf16_to_f32(round_bf16(-2.5)), -2.5);
        assert_eq!(bf16_to_f32(round_bf16(f32::MAX)), f32::INFINITY);
        assert_eq!(
            bf16_to_f32(round_bf16(f32::NEG_INFINITY)),
            f32::NEG_INFINITY
        );
        assert!(bf16_to_f32(round_bf16(f32::NAN)).is_nan());
    }

    /// The portable rounding is the hardware's (`vcvtne2ps2bf16`), value for value, on
    /// random bit patterns and the edges (ties, denormals, the largest values, NaN).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn portable_rounding_is_the_hardware_conversion() {
        if !bf16_supported() {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let mut rng = Rng::new(11);
        let mut values: Vec<f32> = (0..4096)
            .map(|_| f32::from_bits(rng.next_u64() as u32))
            .collect();
        values.extend([
            0.0,
            -0.0,
            1.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        values.resize(values.len().div_ceil(32) * 32, 0.5);
        let mut hw = vec![0u32; values.len() / 2];
        // Safety: AVX512-BF16 is present; one row of values.len() values into len/2 pairs.
        unsafe { avx512::round_rows(values.as_ptr(), 0, 1, values.len(), hw.as_mut_ptr()) };
        for (i, &v) in values.iter().enumerate() {
            let h = (hw[i / 2] >> (16 * (i % 2))) as u16;
            let (ours, theirs) = (bf16_to_f32(round_bf16(v)), bf16_to_f32(h));
            let same = ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan());
            assert!(
                same,
                "{v:e} ({:#010x}): ours {ours:e}, hardware {theirs:e}",
                v.to_bits()
            );
        }
    }

    /// `Σ |a|·|b|` of each output, the scale of f32 accumulation error.
    fn magnitudes(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.iter().map(|x| x.abs()).collect(),
            b.iter().map(|x| x.abs()).collect(),
        );
        gemm_reference(m, k, n, &a, &b, &Epilogue::linear())
    }

    /// The GEMM against the definition on the bf16-rounded operands, summed in f32: equal
    /// to f32 rounding of the sums (the products of two bf16 are exact in f32).
    fn check(m: usize, k: usize, n: usize) {
        let mut rng = Rng::new((m * 131 + k * 7 + n) as u64);
        let (a, b, bias) = (
            rng.signed_vec(m * k),
            rng.signed_vec(k * n),
            rng.signed_vec(n),
        );
        let Some(pb) = packed(&b, k, n) else { return };
        for kk in 0..k {
            for j in 0..n {
                assert_eq!(pb.at(kk, j), bf16_to_f32(round_bf16(b[kk * n + j])));
            }
        }
        let epi = Epilogue::new(Some(&bias), -1.0, 2.0);
        let want = gemm_reference(m, k, n, &rounded(&a), &rounded(&b), &epi);
        let scale = magnitudes(m, k, n, &a, &b);
        let mut c = vec![f32::NAN; m * n];
        gemm(m, &a, k, &pb, &mut c, n, &epi);
        for (i, ((&got, &w), &s)) in c.iter().zip(&want).zip(&scale).enumerate() {
            // Both sum in f32, in different orders (pairs, then the accumulator); the worst
            // case differs by k·ε·Σ|a·b|, these sizes by at most 0.6·ε·(Σ|a·b| + 1) (measured
            // over this test's cases, K up to 1024).
            let tol = 4.0 * f32::EPSILON * (s + 1.0);
            assert!(
                (got - w).abs() <= tol,
                "m{m} k{k} n{n}: [{}, {}] is {got}, expected {w}",
                i / n,
                i % n
            );
        }
        // And it is the rounding of the f32 GEMM, not something else: each operand is within
        // 2⁻⁹ of its f32 value, so each product within about 2⁻⁸ and the sum within
        // Σ|a·b|/256 (measured: 0.68 of that at most); twice that bounds it.
        let f32_c = gemm_reference(m, k, n, &a, &b, &epi);
        for (&got, (&f, &s)) in c.iter().zip(f32_c.iter().zip(&scale)) {
            assert!((got - f).abs() <= 2.0 * (s + 1.0) / 256.0);
        }
    }

    #[test]
    fn matches_the_rounded_definition_on_edge_sizes() {
        for m in [1, 2, 5, 12, 13, 14, 15, 16, 25, 49] {
            for n in [1, 2, 15, 16, 17, 31, 32, 33, 65] {
                for k in [1, 2, 3, 8, 17, 31, 32, 33, 64, 70] {
                    check(m, k, n);
                }
            }
        }
        check(49, 1024, 1024);
        check(1, 1024, 1001);
        check(196, 27, 32); // the stem as im2col: odd K
    }

    #[test]
    fn column_ranges_and_accumulation() {
        let (m, k, n) = (13, 45, 100);
        let mut rng = Rng::new(3);
        let (a, b) = (rng.signed_vec(m * k), rng.signed_vec(k * n));
        let Some(pb) = packed(&b, k, n) else { return };
        let mut whole = vec![0.0; m * n];
        gemm(m, &a, k, &pb, &mut whole, n, &Epilogue::linear());
        // Columns 32..100 alone, into a buffer of their own width.
        let mut part = vec![f32::NAN; m * 68];
        gemm_cols(m, &a, k, &pb, 32..100, &mut part, 68, &Epilogue::linear());
        for i in 0..m {
            assert_eq!(&part[i * 68..][..68], &whole[i * n + 32..][..68]);
        }
        // Accumulating adds to what C holds.
        let mut twice = whole.clone();
        gemm(m, &a, k, &pb, &mut twice, n, &Epilogue::accumulating());
        for (t, w) in twice.iter().zip(&whole) {
            assert_eq!(*t, 2.0 * w);
        }
    }

    #[test]
    fn only_avx512_packings_become_bf16() {
        let b = vec![1.0; 8 * 40];
        for isa in Isa::available() {
            let p = PackedB::new(isa, &b, 8, 40).to_bf16();
            let expected = isa.kind() == IsaKind::Avx512 && bf16_supported();
            assert_eq!(p.is_some(), expected, "{isa}");
        }
    }
}
