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
    let export = |format: &str, out: &std::path::Path| {
        mobilenet()
            .args(["export", "--format", format, "--model"])
            .arg(&model)
            .arg("-o")
            .arg(out)
            .output()
            .expect("should succeed")
    };
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
    let want = classify(&model);
    // Each export is described, and classifies as the model does (`classify` reads both).
    for (format, file, input) in [
        ("tflite", "bugs.tflite", "input [1, 64, 64, 3]"),
        ("onnx", "bugs.onnx", "input [1, 3, 64, 64]"),
    ] {
        let path = dir.join(file);
        let out = export(format, &path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.contains(input) && err.contains("[1, 3] logits"),
            "{err}"
        );
        let got = classify(&path);
        for (x, y) in want["top"]
            .as_array()
            .expect("top")
            .iter()
            .zip(got["top"].as_array().expect("top"))
        {
            assert_eq!(x["label"], y["label"], "{format}: {want} vs {got}");
            let (p, q) = (x["probability"].as_f64(), y["probability"].as_f64());
            assert!(
                (p.expect("p") - q.expect("q")).abs() < 1e-5,
                "{format}: {want} vs {got}"
            );
        }
    }
    // Overwriting the input is refused.
    let out = export("tflite", &model);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("-o names the input model"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_quantized_tflite_exports_as_int8_onnx_and_a_float_model_is_told_to_quantize_first() {
    let dir = std::env::temp_dir().join(format!("mobilenet-export-int8-{}", std::process::id()));
    let images = dir.join("calibration");
    std::fs::create_dir_all(&images).expect("should succeed");
    for i in 0..4 {
        std::fs::write(
            images.join(format!("{i}.png")),
            common::http::png(3 + i, 70, 60),
        )
        .expect("should succeed");
    }
    let config = MobileNetConfig::new(0.25, 64)
        .expect("should succeed")
        .with_classes(3)
        .expect("should succeed");
    let model = dir.join("m.safetensors");
    ModelFile::random(config, 9)
        .save(&model)
        .expect("should succeed");
    let run = |args: &[&str]| {
        let out = mobilenet().args(args).output().expect("should succeed");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), err)
    };
    let path = |name: &str| dir.join(name).to_string_lossy().to_string();
    let (ok, err) = run(&[
        "quantize",
        "--model",
        &path("m.safetensors"),
        "--calibration",
        &path("calibration"),
        "-o",
        &path("q.tflite"),
    ]);
    assert!(ok, "{err}");
    // A quantized .tflite goes to ONNX as int8 (QDQ) unless asked otherwise.
    let (ok, err) = run(&[
        "export",
        "--model",
        &path("q.tflite"),
        "--format",
        "onnx",
        "-o",
        &path("q.onnx"),
    ]);
    assert!(ok && err.contains("int8 ONNX in QDQ form"), "{err}");
    let onnx = std::fs::read(dir.join("q.onnx")).expect("written");
    let count = |needle: &[u8]| onnx.windows(needle.len()).filter(|w| *w == needle).count();
    assert_eq!(count(b"QLinearConv"), 0, "QDQ, not QOperator form");
    assert!(count(b"QuantizeLinear") > 27, "a QuantizeLinear per layer");
    let (ok, err) = run(&[
        "export",
        "--model",
        &path("q.tflite"),
        "--format",
        "onnx",
        "--precision",
        "f32",
        "-o",
        &path("f.onnx"),
    ]);
    assert!(ok && err.contains("[1, 3] logits"), "{err}");
    // Int8 from a float model needs calibration: the error says how.
    let (ok, err) = run(&[
        "export",
        "--model",
        &path("m.safetensors"),
        "--format",
        "onnx",
        "--precision",
        "int8",
        "-o",
        &path("x.onnx"),
    ]);
    assert!(!ok && err.contains("quantize it first"), "{err}");
    assert!(!dir.join("x.onnx").exists());
    std::fs::remove_dir_all(&dir).ok();
}
