//! The integer GEMM against its definition on every instruction set this CPU runs.

use super::*;

/// xorshift32 values (the stem's tests use them too).
pub(super) fn noise(seed: u32, n: usize) -> Vec<u32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        })
        .collect()
}

fn check(m: usize, k: usize, n: usize, row_coeff: i32) {
    for lda in [k + 3, k] {
        // Lower bound 0, and at the zero point (ReLU: the exact form's cheaper variant).
        for lo in [0, 11] {
            check_with(m, k, n, row_coeff, false, lda, lo);
            check_with(m, k, n, row_coeff, true, lda, lo);
        }
    }
}

/// `fp32`: XNNPACK's requantization, scales that put most outputs inside the bytes. `lda`:
/// A's row stride (`k`: contiguous rows, which short rows' sums take together). `lo`: the
/// lower bound (the zero point is 11).
fn check_with(m: usize, k: usize, n: usize, row_coeff: i32, fp32: bool, lda: usize, lo: i32) {
    let a: Vec<u8> = noise(m as u32 * 7 + 1, m * (k + 3))
        .iter()
        .map(|&v| v as u8)
        .collect();
    let w: Vec<i8> = noise(k as u32 * 13 + n as u32, n * k)
        .iter()
        .map(|&v| v as i8)
        .collect();
    let b = PackedQB::new(&w, k, n);
    let bias: Vec<i32> = noise(5, n)
        .iter()
        .map(|&v| (v % 20_000) as i32 - 10_000)
        .collect();
    let mult: Vec<i32> = noise(6, n)
        .iter()
        .map(|&v| (1 << 30) + (v >> 2) as i32)
        .collect();
    // Channel 1 shifts by 25: the zero point can then not be folded into the rounding
    // constant for any channel (the other channels show whether it is added).
    let shift: Vec<i32> = (0..n as i32)
        .map(|j| if j == 1 { -25 } else { -(j % 5) - 6 })
        .collect();
    let rq = match fp32 {
        false => Requant::new(&bias, &mult, &shift, 11, lo, 255),
        true => {
            let scale: Vec<f32> = mult
                .iter()
                .map(|&m| m as f32 / (1u64 << 45) as f32 / (k as f32).sqrt())
                .collect();
            Requant::fp32(&bias, &scale, 11, lo, 255)
        }
    };
    let mut want = vec![0u8; m * n];
    qgemm_reference(m, &a, lda, &b, row_coeff, &rq, &mut want, n);
    for isa in IntIsa::available() {
        let mut got = vec![0u8; m * n];
        qgemm(
            isa,
            m,
            &a,
            lda,
            &b,
            row_coeff,
            &rq,
            &mut got,
            n,
            0..b.panels(),
        );
        assert_eq!(
            got, want,
            "{isa} m {m} k {k} n {n} coeff {row_coeff} fp32 {fp32}"
        );
        // The panels split across calls compose the whole.
        let mut split = vec![0u8; m * n];
        let half = b.panels() / 2;
        qgemm(isa, m, &a, lda, &b, row_coeff, &rq, &mut split, n, 0..half);
        qgemm(
            isa,
            m,
            &a,
            lda,
            &b,
            row_coeff,
            &rq,
            &mut split,
            n,
            half..b.panels(),
        );
        assert_eq!(split, want, "{isa} split m {m} k {k} n {n}");
    }
}

#[test]
fn every_isa_matches_reference_on_edge_sizes() {
    for &(m, k, n) in &[
        (1, 1, 1),
        (13, 5, 33),
        (12, 8, 32),
        (25, 27, 8),
        // AVX2's narrow tiles (n ≤ 8): 6 + 5 rows, 4, 2 + a 8-column half after 16.
        (11, 9, 5),
        (4, 16, 8),
        (8, 12, 24),
        (3, 70, 17),
        (30, 128, 65),
        // AMX: short depths (one chunk), ragged and whole 32-row blocks, several chunks.
        (33, 28, 40),
        (64, 32, 64),
        (70, 192, 96),
        (5, 64, 32),
        // Contiguous short rows summed 64 bytes at a time, and the rows left over.
        (37, 8, 16),
        (29, 16, 16),
        (19, 32, 64),
        (9, 64, 8),
        // Contiguous rows of 24 and 40 bytes: not summed in groups (0.75's first layers).
        (11, 24, 48),
        (7, 40, 16),
    ] {
        check(m, k, n, 0);
        check(m, k, n, 23);
    }
}

#[test]
fn mobilenet_shapes() {
    check(49, 1024, 1024, 0);
    check(196, 256, 512, -105);
    check(1, 1024, 1001, 0);
}

/// The AVX2 kernels fold the first call's row coefficient into their copy of B; later calls
/// with other coefficients (and one too large to fold) still give the definition.
#[test]
fn one_packed_b_serves_any_row_coefficient() {
    let (m, k, n) = (13, 37, 24);
    let a: Vec<u8> = noise(3, m * k).iter().map(|&v| v as u8).collect();
    let w: Vec<i8> = noise(4, n * k).iter().map(|&v| v as i8).collect();
    let bias: Vec<i32> = (0..n as i32).map(|j| j * 77 - 900).collect();
    let rq = Requant::new(&bias, &[(1 << 30) + 4321], &[-9], 40, 0, 255);
    for isa in IntIsa::available() {
        let b = PackedQB::new(&w, k, n);
        for coeff in [5, -105, 0, 40_000, 5] {
            let mut want = vec![0u8; m * n];
            qgemm_reference(m, &a, k, &b, coeff, &rq, &mut want, n);
            let mut got = vec![0u8; m * n];
            qgemm(isa, m, &a, k, &b, coeff, &rq, &mut got, n, 0..b.panels());
            assert_eq!(got, want, "{isa} coeff {coeff}");
        }
    }
}
