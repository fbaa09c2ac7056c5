//! Locating the shared test data (`../shared/data` beside the project checkout).
//!
//! Without it a test prints why it skips and passes, except when `CI=true`: CI always has the
//! folder, so there its absence is an error.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;

pub mod data_parallel;

/// The shared data folder, or `None` (after printing why) when it is absent outside CI.
pub fn shared_data(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("MOBILENET_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if dir.join("PROVENANCE.md").exists() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: shared test data not found at {} (CI=true)",
            dir.display()
        );
    }
    eprintln!(
        "{test}: skipped: shared test data not found at {}",
        dir.display()
    );
    None
}

/// The reference outputs recorded from TensorFlow / LiteRT.
pub fn expected(data: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(data.join("reference/mobilenet_v1_expected.json"))
        .expect("read mobilenet_v1_expected.json");
    serde_json::from_str(&text).expect("parse mobilenet_v1_expected.json")
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// The gradient checked along its own direction for all parameters at once:
/// `(L(θ + εĝ) − L(θ − εĝ)) / 2ε ≈ |g|` within 5%, where `loss_of` is the step's loss at the
/// network's current parameters. (ReLU6 kinks make single coordinates of early layers
/// unreliable; along the gradient the crossings average out.) Leaves the parameters moved.
pub fn check_directional_derivative(
    net: &mut mobilenet::train::net::TrainNet,
    grads: &[Vec<f32>],
    mut loss_of: impl FnMut(&mut mobilenet::train::net::TrainNet) -> f64,
) {
    let norm: f64 = grads
        .iter()
        .flatten()
        .map(|&g| (g as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let base: Vec<Vec<f32>> = net.params.iter().map(|p| p.value.clone()).collect();
    let mut along = |t: f64| {
        for ((p, b), g) in net.params.iter_mut().zip(&base).zip(grads) {
            for ((v, &b), &g) in p.value.iter_mut().zip(b).zip(g) {
                *v = (b as f64 + t * g as f64 / norm) as f32;
            }
        }
        loss_of(net)
    };
    let eps = 1e-3;
    let directional = (along(eps) - along(-eps)) / (2.0 * eps);
    assert!(
        (directional - norm).abs() <= 0.05 * norm,
        "directional derivative {directional} vs gradient norm {norm}"
    );
}
