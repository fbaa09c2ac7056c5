//! Test helpers: the seeded generator and a tolerance check that names the first mismatch.

pub use crate::rng::Rng;

/// Asserts `|a − e| ≤ tol · max(1, |e|)` element-wise.
pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let ok = (a - e).abs() <= tol * e.abs().max(1.0);
        assert!(ok, "{what}: element {i} is {a}, expected {e}");
    }
}
