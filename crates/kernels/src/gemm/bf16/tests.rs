//! The bf16 GEMM against its definition.

use super::super::{gemm, gemm_cols, gemm_moments, gemm_reference, gemm_transposed_a, PackedB};
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

/// Packing rows straight into pairs gives `to_bf16`'s packing, value for value, and a repack
/// to other sizes is the packing of those; so does packing a transposed B straight into pairs.
#[test]
fn direct_packing_is_to_bf16s() {
    let Some(isa) = Isa::of_kind(IsaKind::Avx512).filter(|_| bf16_supported()) else {
        println!("skipped: this CPU has no AVX512-BF16");
        return;
    };
    let mut rng = Rng::new(5);
    let mut reused = PackedB::new_bf16(isa, &[], 0, 7).expect("should succeed");
    for (k, n) in [
        (1, 1),
        (2, 16),
        (3, 17),
        (7, 32),
        (8, 33),
        (33, 100),
        (64, 64),
        (5, 1),
    ] {
        let b = rng.signed_vec(k * n);
        let want = PackedB::new(isa, &b, k, n)
            .to_bf16()
            .expect("should succeed");
        assert_eq!(
            PackedB::new_bf16(isa, &b, k, n).as_ref(),
            Some(&want),
            "k{k} n{n}"
        );
        reused.repack(&b, k, n);
        assert_eq!(reused, want, "repacked to k{k} n{n}");
        // The same B given transposed (`[n, k]`).
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let want_t = PackedB::from_transposed(isa, &bt, k, n).to_bf16();
        assert_eq!(want_t.as_ref(), Some(&want), "k{k} n{n}: transposed");
        let direct = PackedB::from_transposed_bf16(isa, &bt, k, n);
        assert_eq!(
            direct.as_ref(),
            Some(&want),
            "k{k} n{n}: transposed, direct"
        );
    }
}

/// The transposed form (`C = Aᵀᵀ · B`, training's weight gradient) against the definition on
/// rounded operands, accumulating into C.
#[test]
fn transposed_a_matches_the_rounded_definition() {
    for (m, k, n) in [
        (1, 1, 1),
        (13, 7, 33),
        (32, 64, 64),
        (49, 33, 17),
        (64, 2048, 128),
    ] {
        let mut rng = Rng::new((m * 31 + k * 3 + n) as u64);
        let (a, b) = (rng.signed_vec(m * k), rng.signed_vec(k * n));
        let Some(isa) = Isa::of_kind(IsaKind::Avx512).filter(|_| bf16_supported()) else {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        };
        let pb = PackedB::new_bf16(isa, &b, k, n).expect("should succeed");
        // Aᵀ: k rows of m, with a wider stride than m.
        let lda = m + 3;
        let mut at = vec![f32::NAN; k * lda];
        for i in 0..m {
            for kk in 0..k {
                at[kk * lda + i] = a[i * k + kk];
            }
        }
        let start = rng.signed_vec(m * n);
        let mut c = start.clone();
        gemm_transposed_a(m, &at, lda, &pb, &mut c, n, &Epilogue::accumulating());
        let want = gemm_reference(m, k, n, &rounded(&a), &rounded(&b), &Epilogue::linear());
        let scale = magnitudes(m, k, n, &a, &b);
        for i in 0..m * n {
            let tol = 4.0 * f32::EPSILON * (scale[i] + start[i].abs() + 1.0);
            assert!(
                (c[i] - start[i] - want[i]).abs() <= tol,
                "m{m} k{k} n{n} [{}, {}]: {} + {} vs {}",
                i / n,
                i % n,
                start[i],
                want[i],
                c[i]
            );
        }
    }
}

/// The moments form writes what the plain form writes and sums each column (and its squares)
/// over the rows, zeros in the padding columns.
#[test]
fn moments_are_the_column_sums_of_the_output() {
    for (m, k, n) in [(1, 3, 5), (13, 33, 40), (100, 64, 32), (49, 128, 70)] {
        let mut rng = Rng::new((m + k + n) as u64);
        let (a, b) = (rng.signed_vec(m * k), rng.signed_vec(k * n));
        let Some(pb) = packed(&b, k, n) else { return };
        let mut plain = vec![0.0; m * n];
        gemm(m, &a, k, &pb, &mut plain, n, &Epilogue::linear());
        let mut c = vec![f32::NAN; m * n];
        let mut moments = vec![0.0f64; 2 * pb.padded_n()];
        gemm_moments(m, (&a, k), &pb, (&mut c, n), &mut moments);
        assert_eq!(c, plain);
        let (sums, squares) = moments.split_at(pb.padded_n());
        for j in 0..pb.padded_n() {
            let column = (0..m).map(|i| if j < n { f64::from(c[i * n + j]) } else { 0.0 });
            let (s, q) = column.fold((0.0, 0.0), |(s, q), v| (s + v, q + v * v));
            // Summed in f32 per tile of 12 rows, then in f64.
            let tol = 1e-5 * (q + 1.0);
            assert!(
                (sums[j] - s).abs() <= tol,
                "m{m} n{n} column {j}: Σ {} vs {s}",
                sums[j]
            );
            assert!(
                (squares[j] - q).abs() <= tol,
                "m{m} n{n} column {j}: Σ² {} vs {q}",
                squares[j]
            );
        }
    }
}
