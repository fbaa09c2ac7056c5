//! Locating the shared test data (`../shared/data` beside the project checkout).
//!
//! Without it a test prints why it skips and passes, except when `CI=true`: CI always has the
//! folder, so there its absence is an error.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;

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
