//! ONNX export (`mobilenet export --format onnx`): the same two seeded models as
//! `export_tflite.rs`, exported NCHW and NHWC; the fixture `fixtures/export_onnx.json` holds
//! each file's length and FNV-1a hash and the logits ONNX Runtime computed from those very
//! files (`scripts/export_fixture.py`, onnxruntime 1.32), which our engine must match within
//! 1e-4. Regenerate as `export_tflite.rs` says.

use std::path::Path;

use mobilenet::onnx::{export_onnx, Layout};
use mobilenet::{Activation, InferenceModel, MobileNetConfig, ModelFile, Padding};

fn input(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 256) as f32 / 127.5 - 1.0)
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn seeded_onnx_exports_are_the_bytes_onnx_runtime_ran() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/export_onnx.json")).expect("the fixture");
    let config = MobileNetConfig::new(0.25, 64)
        .expect("should succeed")
        .with_classes(10)
        .expect("should succeed");
    let models = [
        ("tf_same_relu6", ModelFile::random(config, 20170417)),
        (
            "symmetric_relu",
            ModelFile::random(
                config
                    .with_padding(Padding::Symmetric)
                    .with_activation(Activation::Relu),
                4,
            ),
        ),
    ];
    let mut exports = Vec::new();
    for (name, file) in &models {
        for (layout, tag) in [(Layout::Nchw, "nchw"), (Layout::Nhwc, "nhwc")] {
            let bytes = export_onnx(file, layout).expect("should succeed");
            exports.push((format!("{name}_{tag}"), file, bytes));
        }
    }
    if let Some(dir) = std::env::var_os("MOBILENET_WRITE_EXPORTS") {
        for (name, _, bytes) in &exports {
            std::fs::write(Path::new(&dir).join(format!("{name}.onnx")), bytes)
                .expect("should succeed");
        }
    }
    for (name, file, bytes) in &exports {
        let want = &fixture["models"][name];
        assert_eq!(want["bytes"], bytes.len(), "{name}: file length");
        assert_eq!(
            want["fnv1a64"],
            format!("{:016x}", fnv1a(bytes)),
            "{name}: the exported bytes changed; regenerate the fixture if on purpose"
        );
        let model = InferenceModel::new(file).expect("should succeed");
        let ours = model.session(1, 1).run(&input(model.input_len())).to_vec();
        let ort: Vec<f64> = want["ort_logits"]
            .as_array()
            .expect("logits")
            .iter()
            .map(|v| v.as_f64().expect("a number"))
            .collect();
        assert_eq!(ours.len(), ort.len());
        let worst = ours
            .iter()
            .zip(&ort)
            .map(|(&a, b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= 1e-4,
            "{name}: max |Δlogit| against ONNX Runtime {worst:.2e}"
        );
    }
}
