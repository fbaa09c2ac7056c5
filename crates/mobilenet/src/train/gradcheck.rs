//! Central-difference gradient checks shared by the layer tests.

/// Central-difference check of `grad` against `loss` at a sample of coordinates of `x`.
pub(crate) fn check_gradient(
    what: &str,
    x: &mut [f32],
    grad: &[f32],
    mut loss: impl FnMut(&[f32]) -> f64,
) {
    let eps = 1e-2f32;
    let step = (x.len() / 40).max(1);
    for i in (0..x.len()).step_by(step) {
        let orig = x[i];
        x[i] = orig + eps;
        let up = loss(x);
        x[i] = orig - eps;
        let down = loss(x);
        x[i] = orig;
        let numeric = (up - down) / (2.0 * eps as f64);
        let analytic = grad[i] as f64;
        let tol = 2e-2 * numeric.abs().max(analytic.abs()) + 2e-3;
        assert!(
            (numeric - analytic).abs() <= tol,
            "{what}[{i}]: numeric {numeric}, analytic {analytic}"
        );
    }
}

/// A fixed random projection of an output to a scalar loss.
pub(crate) fn project(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}
