//! `mobilenet export` as a user runs it: the float .tflite classifies like the model it came
//! from (labels included); ONNX is written; overwriting the input is refused.

mod common;

use common::{json_stdout, mobilenet};
use mobilenet::{MobileNetConfig, ModelFile};

#[test]
fn an_exported_tflite_classifies_like_its_model() {
    let dir = std::env::temp_dir().join(format!("mobilenet-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("should succeed");
    let config = MobileNetConfig::new(0.25, 64)
        .expect("should succeed")
        .with_classes(3)
        .expect("should succeed");
    let mut file = ModelFile::random(config, 5);
    file.labels = Some(["ant", "bee", "cicada"].map(String::from).to_vec());
    let model = dir.join("bugs.safetensors");
    file.save(&model).expect("should succeed");
    let image = dir.join("x.png");
    std::fs::write(&image, common::http::png(3, 90, 70)).expect("should succeed");
    let exported = dir.join("bugs.tflite");
    let out = mobilenet()
        .args(["export", "--format", "tflite", "--model"])
        .arg(&model)
        .arg("-o")
        .arg(&exported)
        .output()
        .expect("should succeed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("[1, 3] logits"));
    let classify = |m: &std::path::Path| {
        json_stdout(
            mobilenet()
                .args(["classify", "--json", "--top", "3", "--model"])
                .arg(m)
                .arg(&image)
                .output()
                .expect("should succeed"),
        )
    };
    let (a, b) = (classify(&model), classify(&exported));
    for (x, y) in a["top"]
        .as_array()
        .expect("top")
        .iter()
        .zip(b["top"].as_array().expect("top"))
    {
        assert_eq!(x["label"], y["label"], "{a} vs {b}");
        let (p, q) = (x["probability"].as_f64(), y["probability"].as_f64());
        assert!((p.expect("p") - q.expect("q")).abs() < 1e-5, "{a} vs {b}");
    }

    // ONNX, NCHW: written and described.
    let onnx = dir.join("bugs.onnx");
    let out = mobilenet()
        .args(["export", "--format", "onnx", "--model"])
        .arg(&model)
        .arg("-o")
        .arg(&onnx)
        .output()
        .expect("should succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("input [1, 3, 64, 64]"),
        "{err}"
    );
    assert!(std::fs::metadata(&onnx).is_ok_and(|m| m.len() > 100_000));
    // Overwriting the input is refused.
    let out = mobilenet()
        .args(["export", "--format", "tflite", "--model"])
        .arg(&model)
        .arg("-o")
        .arg(&model)
        .output()
        .expect("should succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("-o names the input model"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
