//! Central-difference gradient checks shared by the layer tests.

/// Central-difference check of `grad` against `loss` at a sample of coordinates of `x`.
pub(crate) fn check_gradient(
    what: &str,
    x: &mut [f32],
    grad: &[f32],
    loss: impl FnMut(&[f32]) -> f64,
) {
    check_gradient_with(what, x, grad, &[1e-2], loss);
}

/// [`check_gradient`] with central differences of several steps: a coordinate passes when any
/// of them agrees (a kink of the loss — ReLU6, max — inside one interval spoils only that one).
pub(crate) fn check_gradient_with(
    what: &str,
    x: &mut [f32],
    grad: &[f32],
    steps: &[f32],
    mut loss: impl FnMut(&[f32]) -> f64,
) {
    let step = (x.len() / 40).max(1);
    for i in (0..x.len()).step_by(step) {
        let orig = x[i];
        let analytic = grad[i] as f64;
        let mut seen = Vec::new();
        let ok = steps.iter().any(|&eps| {
            x[i] = orig + eps;
            let up = loss(x);
            x[i] = orig - eps;
            let down = loss(x);
            x[i] = orig;
            let numeric = (up - down) / (2.0 * eps as f64);
            seen.push(numeric);
            let tol = 2e-2 * numeric.abs().max(analytic.abs()) + 2e-3;
            (numeric - analytic).abs() <= tol
        });
        assert!(
            ok,
            "{what}[{i}]: numeric {seen:?} (steps {steps:?}), analytic {analytic}"
        );
    }
}

/// A fixed random projection of an output to a scalar loss.
pub(crate) fn project(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}
