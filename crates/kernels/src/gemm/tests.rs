//! The GEMM forms against the obviously-correct definition, on every instruction set.

use super::*;
use crate::testing::{assert_close, Rng};

fn check(m: usize, k: usize, n: usize) {
    let mut rng = Rng::new((m * 7919 + k * 31 + n) as u64);
    let a = rng.signed_vec(m * k);
    let b = rng.signed_vec(k * n);
    let bias = rng.signed_vec(n);
    let epi = Epilogue::new(Some(&bias), -1.0, 2.0);
    let expected = gemm_reference(m, k, n, &a, &b, &epi);
    for isa in Isa::available() {
        let packed = PackedB::new(isa, &b, k, n);
        let mut c = vec![f32::NAN; m * n];
        gemm(m, &a, k, &packed, &mut c, n, &epi);
        assert_close(&c, &expected, 1e-4, &format!("{isa} m{m} k{k} n{n}"));
    }
}

#[test]
fn every_isa_matches_reference_on_edge_sizes() {
    // Rows around MR (4, 6, 8, 12), columns around NR (2, 8, 16, 32), small and odd K.
    for m in [1, 2, 5, 6, 7, 11, 12, 13, 14, 15, 16, 25, 27, 49] {
        for n in [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 65] {
            for k in [1, 3, 8, 17] {
                check(m, k, n);
            }
        }
    }
}

#[test]
fn mobilenet_shapes() {
    check(49, 1024, 1024); // conv_13/pointwise at 224
    check(196, 256, 512); // conv_6/pointwise
    check(1, 1024, 1001); // the classifier at batch 1
    check(16, 8, 16); // α = 0.25 conv_1/pointwise, a few rows
}

#[test]
fn column_ranges_compose_the_whole() {
    let (m, k, n) = (3, 200, 70);
    let mut rng = Rng::new(5);
    let a = rng.signed_vec(m * k);
    let b = rng.signed_vec(k * n);
    let bias = rng.signed_vec(n);
    let epi = Epilogue::new(Some(&bias), f32::NEG_INFINITY, f32::INFINITY);
    let expected = gemm_reference(m, k, n, &a, &b, &epi);
    for isa in Isa::available() {
        let packed = PackedB::new(isa, &b, k, n);
        let nr = panel_width(isa);
        let mut start = 0;
        while start < n {
            let end = (start + 2 * nr).min(n);
            let w = end - start;
            let mut c = vec![f32::NAN; m * w];
            gemm_cols(m, &a, k, &packed, start..end, &mut c, w, &epi);
            for i in 0..m {
                let want = &expected[i * n + start..i * n + end];
                assert_close(
                    &c[i * w..(i + 1) * w],
                    want,
                    1e-4,
                    &format!("{isa} {start}..{end}"),
                );
            }
            start = end;
        }
    }
}

#[test]
#[cfg_attr(target_family = "wasm", ignore = "WebAssembly here has no threads")]
fn column_blocks_on_threads_compose_the_whole() {
    let (m, k, n) = (5, 64, 100);
    let mut rng = Rng::new(8);
    let a = rng.signed_vec(m * k);
    let b = rng.signed_vec(k * n);
    let bias = rng.signed_vec(n);
    let epi = Epilogue::new(Some(&bias), 0.0, 6.0);
    let expected = gemm_reference(m, k, n, &a, &b, &epi);
    for isa in Isa::available() {
        let packed = PackedB::new(isa, &b, k, n);
        for parts in [1, 2, 3, 7] {
            let mut c = vec![f32::NAN; m * n];
            std::thread::scope(|scope| {
                for block in column_blocks(&mut c, m, n, n, isa, parts) {
                    let (a, packed, epi) = (&a, &packed, &epi);
                    scope.spawn(move || block.gemm(a, k, packed, epi));
                }
            });
            assert_close(&c, &expected, 1e-4, &format!("{isa} {parts} parts"));
        }
    }
}

#[test]
fn accumulate_adds_to_c_and_transposed_packing_matches() {
    let (m, k, n) = (13, 9, 37);
    let mut rng = Rng::new(21);
    let a = rng.signed_vec(m * k);
    let b = rng.signed_vec(k * n);
    let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
    let c0 = rng.signed_vec(m * n);
    let plain = gemm_reference(m, k, n, &a, &b, &Epilogue::linear());
    let expected: Vec<f32> = plain.iter().zip(&c0).map(|(x, y)| x + y).collect();
    for isa in Isa::available() {
        // Packed again over a bigger packing: no stale values in the padding.
        let mut reused = PackedB::new(isa, &rng.signed_vec((k + 3) * (n + 5)), k + 3, n + 5);
        reused.repack(&b, k, n);
        assert_eq!(reused, PackedB::new(isa, &b, k, n), "{isa} repacked");
        for packed in [
            PackedB::new(isa, &b, k, n),
            PackedB::from_transposed(isa, &bt, k, n),
            reused,
        ] {
            let mut c = c0.clone();
            gemm(m, &a, k, &packed, &mut c, n, &Epilogue::accumulating());
            assert_close(&c, &expected, 1e-5, isa.name());
        }
    }
}

/// Aᵀ read in place (strided, accumulating) equals the GEMM of A, on every instruction
/// set and around every tile size.
#[test]
fn transposed_a_matches_the_reference() {
    for (m, k, n) in [
        (1, 1, 1),
        (5, 7, 9),
        (13, 40, 37),
        (12, 300, 16),
        (25, 3, 65),
    ] {
        let lda = m + 3;
        let mut rng = Rng::new((m * 131 + k * 7 + n) as u64);
        let a = rng.signed_vec(m * k);
        let at: Vec<f32> = (0..k * lda)
            .map(|i| match i % lda {
                col if col < m => a[col * k + i / lda],
                _ => f32::NAN, // padding past m: never read
            })
            .collect();
        let b = rng.signed_vec(k * n);
        let c0 = rng.signed_vec(m * n);
        let plain = gemm_reference(m, k, n, &a, &b, &Epilogue::linear());
        let expected: Vec<f32> = plain.iter().zip(&c0).map(|(x, y)| x + y).collect();
        for isa in Isa::available() {
            let packed = PackedB::new(isa, &b, k, n);
            let mut c = c0.clone();
            gemm_transposed_a(m, &at, lda, &packed, &mut c, n, &Epilogue::accumulating());
            assert_close(&c, &expected, 1e-4, &format!("{isa} m{m} k{k} n{n}"));
        }
    }
}

/// The column sums and sums of squares of C, added to what the buffer held, next to the
/// product itself; across tile and panel edges.
#[test]
fn moments_are_the_column_sums_of_c() {
    for (m, k, n) in [(1, 3, 5), (7, 16, 33), (50, 9, 16), (13, 1, 70)] {
        let mut rng = Rng::new((m * 17 + k + n * 5) as u64);
        let (a, b) = (rng.signed_vec(m * k), rng.signed_vec(k * n));
        let expected = gemm_reference(m, k, n, &a, &b, &Epilogue::linear());
        for isa in Isa::available() {
            let packed = PackedB::new(isa, &b, k, n);
            let np = packed.padded_n();
            let mut moments = vec![1.0f64; 2 * np];
            let mut c = vec![f32::NAN; m * n];
            gemm_moments(m, (&a, k), &packed, (&mut c, n), &mut moments);
            assert_close(&c, &expected, 1e-5, &format!("{isa} C m{m} k{k} n{n}"));
            for j in 0..np {
                let col = (0..m).map(|i| {
                    if j < n {
                        expected[i * n + j] as f64
                    } else {
                        0.0
                    }
                });
                let (want_s, want_q) = col.fold((1.0, 1.0), |(s, q), v| (s + v, q + v * v));
                let (got_s, got_q) = (moments[j], moments[np + j]);
                let what = format!("{isa} m{m} k{k} n{n} column {j}");
                assert!(
                    (got_s - want_s).abs() < 1e-4 * (1.0 + want_s.abs()),
                    "Σ {what}"
                );
                assert!(
                    (got_q - want_q).abs() < 1e-4 * (1.0 + want_q.abs()),
                    "Σ² {what}"
                );
            }
        }
    }
}

#[test]
fn strided_rows_and_no_bias() {
    let (m, k, n) = (9, 5, 20);
    let (lda, ldc) = (7, 23);
    let mut rng = Rng::new(11);
    let a_full = rng.signed_vec(m * lda);
    let b = rng.signed_vec(k * n);
    let a: Vec<f32> = (0..m)
        .flat_map(|i| a_full[i * lda..][..k].to_vec())
        .collect();
    let epi = Epilogue::linear();
    let expected = gemm_reference(m, k, n, &a, &b, &epi);
    for isa in Isa::available() {
        let packed = PackedB::new(isa, &b, k, n);
        let mut c = vec![7.0; m * ldc];
        gemm(m, &a_full, lda, &packed, &mut c, ldc, &epi);
        let got: Vec<f32> = (0..m).flat_map(|i| c[i * ldc..][..n].to_vec()).collect();
        assert_close(&got, &expected, 1e-5, isa.name());
        // Columns past n in each row are untouched.
        assert!((0..m).all(|i| c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 7.0)));
    }
}
