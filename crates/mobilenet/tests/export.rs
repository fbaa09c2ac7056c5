//! Float export: `.tflite` (`tflite::float_graph`) and ONNX (`onnx::export_onnx`).
//!
//! Two seeded models (TF-SAME padding with ReLU6; symmetric padding with ReLU, which exports
//! PAD operators or asymmetric pads) are exported, and the bytes are checked against the
//! fixtures `fixtures/export_{tflite,onnx}.json`: their length and FNV-1a hash, and the logits
//! LiteRT's reference kernels (ai-edge-litert 2.3) and ONNX Runtime 1.32 computed from those
//! very files for a fixed input (`scripts/export_fixture.py`), which our engine must match
//! within 1e-4. So CI checks the bytes we write even without either runtime. To regenerate:
//! `MOBILENET_WRITE_EXPORTS=DIR cargo test -p mobilenet --test export`, then
//! `python scripts/export_fixture.py DIR > crates/mobilenet/tests/fixtures/export_tflite.json`
//! and `python scripts/export_fixture.py DIR onnx > …/export_onnx.json`.
//!
//! Google's float 1.0-224 exported to `.tflite` and read back (`AnyModel::from_bytes`) gives
//! the same logits, labels and preprocessing; so do ONNX exports imported back, and the peers'
//! ONNX files (where `../shared/bench/peers` has generated them) import with Keras's
//! probabilities. Malformed and foreign ONNX graphs are refused naming the node.

mod common;

use std::path::Path;

use mobilenet::onnx::{export_onnx, Layout};
use mobilenet::preprocess::Preprocessing;
use mobilenet::tflite::{float_graph, write};
use mobilenet::{Activation, AnyModel, InferenceModel, MobileNetConfig, ModelFile, Padding};

/// The fixed input both sides use: `((i · 7919) mod 256) / 127.5 − 1`.
fn input(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 256) as f32 / 127.5 - 1.0)
        .collect()
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn seeded() -> Vec<(&'static str, ModelFile)> {
    let config = MobileNetConfig::new(0.25, 64)
        .expect("should succeed")
        .with_classes(10)
        .expect("should succeed");
    let tf = ModelFile::random(config, 20170417);
    let sym = ModelFile::random(
        config
            .with_padding(Padding::Symmetric)
            .with_activation(Activation::Relu),
        4,
    );
    vec![("tf_same_relu6", tf), ("symmetric_relu", sym)]
}

/// Checks each export against `fixture` (its `logits` key holding the runtime's logits), after
/// writing them to `$MOBILENET_WRITE_EXPORTS` when set.
fn check(exports: &[(String, &ModelFile, Vec<u8>)], fixture: &str, logits: &str, ext: &str) {
    if let Some(dir) = std::env::var_os("MOBILENET_WRITE_EXPORTS") {
        for (name, _, bytes) in exports {
            std::fs::write(Path::new(&dir).join(format!("{name}.{ext}")), bytes)
                .expect("should succeed");
        }
    }
    let fixture: serde_json::Value = serde_json::from_str(fixture).expect("parse the fixture");
    for (name, file, bytes) in exports {
        let want = &fixture["models"][name];
        assert_eq!(want["bytes"], bytes.len(), "{name}.{ext}: file length");
        assert_eq!(
            want["fnv1a64"],
            format!("{:016x}", fnv1a(bytes)),
            "{name}.{ext}: the exported bytes changed; regenerate the fixture if on purpose"
        );
        let model = InferenceModel::new(file).expect("should succeed");
        let ours = model.session(1, 1).run(&input(model.input_len())).to_vec();
        let theirs: Vec<f64> = want[logits]
            .as_array()
            .expect("logits")
            .iter()
            .map(|v| v.as_f64().expect("a number"))
            .collect();
        assert_eq!(ours.len(), theirs.len());
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(&a, b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst <= 1e-4, "{name}.{ext}: max |Δlogit| {worst:.2e}");
    }
}

#[test]
fn seeded_tflite_exports_are_the_bytes_litert_ran() {
    let models = seeded();
    let exports: Vec<_> = models
        .iter()
        .map(|(name, file)| {
            let bytes = write(&float_graph(file).expect("should succeed"));
            (name.to_string(), file, bytes)
        })
        .collect();
    check(
        &exports,
        include_str!("fixtures/export_tflite.json"),
        "litert_logits",
        "tflite",
    );
}

#[test]
fn seeded_onnx_exports_are_the_bytes_onnx_runtime_ran() {
    let models = seeded();
    let mut exports = Vec::new();
    for (name, file) in &models {
        for (layout, tag) in [(Layout::Nchw, "nchw"), (Layout::Nhwc, "nhwc")] {
            let bytes = export_onnx(file, layout).expect("should succeed");
            exports.push((format!("{name}_{tag}"), file, bytes));
        }
    }
    check(
        &exports,
        include_str!("fixtures/export_onnx.json"),
        "ort_logits",
        "onnx",
    );
}

#[test]
fn an_exported_model_reads_back_with_its_logits_labels_and_preprocessing() {
    let Some(data) = common::shared_data("an_exported_model_reads_back") else {
        return;
    };
    let path = data.join("mobilenet_v1/float/mobilenet_v1_1.0_224_imagenet_float.safetensors");
    let (mut file, _) =
        mobilenet::import::import(&path, &Default::default()).expect("should succeed");
    let labels = mobilenet::import::read_labels(&data.join("imagenet/imagenet_labels_1001.txt"))
        .expect("should succeed");
    file.labels = Some(labels.clone());
    file.preprocessing = Preprocessing {
        crop: 0.9,
        ..file.preprocessing
    };
    let bytes = write(&float_graph(&file).expect("should succeed"));
    let AnyModel::Float(back) =
        AnyModel::from_bytes(&bytes, Path::new("exported.tflite")).expect("should succeed")
    else {
        panic!("a float .tflite reads back as a float model");
    };
    assert_eq!(back.labels.as_deref(), Some(labels.as_slice()));
    assert_eq!(back.preprocessing, file.preprocessing);
    let (a, b) = (
        InferenceModel::new(&file).expect("should succeed"),
        InferenceModel::new(&back).expect("should succeed"),
    );
    let x = input(a.input_len());
    let (la, lb) = (
        a.session(1, 1).run(&x).to_vec(),
        b.session(1, 1).run(&x).to_vec(),
    );
    let worst = la
        .iter()
        .zip(&lb)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max);
    assert!(
        worst <= 1e-5,
        "max |Δlogit| after the round trip {worst:.2e}"
    );
}

/// Logits of a model file on the fixed input.
fn logits(file: &ModelFile) -> Vec<f32> {
    let m = InferenceModel::new(file).expect("should succeed");
    m.session(1, 1).run(&input(m.input_len())).to_vec()
}

#[test]
fn onnx_exports_import_back_with_their_logits_labels_and_preprocessing() {
    for (name, mut file) in seeded() {
        file.labels = Some((0..10).map(|i| format!("class {i}!")).collect());
        file.preprocessing.crop = 0.8;
        let want = logits(&file);
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let bytes = export_onnx(&file, layout).expect("should succeed");
            let (back, format) = mobilenet::import::import_bytes(
                &bytes,
                Path::new("exported.onnx"),
                &Default::default(),
            )
            .expect("should succeed");
            assert_eq!(format, mobilenet::import::SourceFormat::Onnx);
            assert_eq!(back.config, file.config, "{name} {layout:?}");
            assert_eq!(back.labels, file.labels);
            assert_eq!(back.preprocessing, file.preprocessing);
            let got = logits(&back);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst <= 1e-5, "{name} {layout:?}: {worst:.2e}");
        }
    }
}

#[test]
fn malformed_and_foreign_onnx_graphs_are_refused_naming_what() {
    let (_, file) = seeded().remove(0);
    let bytes = export_onnx(&file, Layout::Nchw).expect("should succeed");
    let read = |b: &[u8]| {
        mobilenet::import::import_bytes(b, Path::new("bad.onnx"), &Default::default())
            .map(|_| ())
            .expect_err("refused")
            .to_string()
    };
    let cut = read(&bytes[..bytes.len() / 2]);
    assert!(
        cut.contains("bad.onnx") && cut.contains("malformed ONNX"),
        "{cut}"
    );
    assert!(read(b"").contains("no graph"), "{}", read(b""));
    // A node renamed to another operator: named in the error.
    let needle = b"GlobalAveragePool";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the pool node");
    let mut foreign = bytes.clone();
    foreign[at..at + needle.len()].copy_from_slice(b"GlobalMaxPool\0\0\0\0");
    let err = read(&foreign);
    assert!(err.contains("operator GlobalMaxPool"), "{err}");
}

#[test]
fn the_peers_onnx_files_import_with_kerass_probabilities() {
    let dir = std::env::var_os("MOBILENET_PEERS_MODELS")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".cache/mobilenet-peers/peers/models"))
        })
        .filter(|d| d.join("mobilenet_v1_0.25_128.onnx").is_file());
    let Some(dir) = dir else {
        eprintln!("skipping: the peers' ONNX files are not generated here (../shared/bench/peers)");
        return;
    };
    for name in ["mobilenet_v1_0.25_128", "mobilenet_v1_1.0_224"] {
        let path = dir.join(format!("{name}.onnx"));
        let (file, _) = mobilenet::import::import(&path, &Default::default()).expect("imports");
        let npy = |p: &Path| -> Vec<f32> {
            let b = std::fs::read(p).expect("npy");
            let header = u16::from_le_bytes([b[8], b[9]]) as usize;
            b[10 + header..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let x = npy(&dir.join(format!("ref/{name}.input_nhwc.npy")));
        let want = npy(&dir.join(format!("ref/{name}.probs.npy")));
        let m = InferenceModel::new(&file).expect("should succeed");
        let l = m.session(1, 1).run(&x).to_vec();
        let mut p = vec![0.0; l.len()];
        mobilenet::classifier::softmax_rows(&l, l.len(), &mut p);
        let worst = p
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst <= 1e-5, "{name}: max |Δp| against Keras {worst:.2e}");
    }
}
