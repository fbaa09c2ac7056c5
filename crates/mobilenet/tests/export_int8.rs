//! Int8 ONNX export in QDQ form (`onnx::export_qdq`) of quantized `.tflite` files: Google's
//! uint8 0.25-128 (per-tensor, NCHW input) and the Visual Wake Words int8 model (per-channel,
//! fully connected classifier, NHWC input).
//!
//! The bytes are pinned by `fixtures/export_qdq.json` with the logits ONNX Runtime 1.32
//! computed from those very files (`scripts/export_fixture.py DIR qdq`, the files written by
//! `MOBILENET_WRITE_EXPORTS=DIR cargo test -p mobilenet --test export_int8`). ONNX Runtime
//! requantizes in float and TFLite (whose arithmetic our integer engine reproduces bit for
//! bit) in fixed point, so the two agree to a step on a few activations of each layer
//! (`scripts/qdq_parity.py` measures every layer alone: at most one step) and to a few steps
//! on the logits; the test holds our engine's logits to ONNX Runtime's within the steps
//! measured on this input (2 for 0.25-128, none for VWW), and the top class to be the same. A wrong transpose, zero point or
//! bias scale is off by far more.

mod common;

use std::path::Path;

use mobilenet::int8::QuantizedModel;
use mobilenet::onnx::{export_qdq, Layout};
use mobilenet::tflite::{read, Graph, OpKind};

const FIXTURE: &str = include_str!("fixtures/export_qdq.json");

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The `.tflite`s of the shared data, by fixture name, with their input layout and the steps
/// our logits differ from ONNX Runtime's on the fixed input (both sides are deterministic: our
/// integer engine gives the same integers on every machine, the fixture is fixed).
fn models(data: &Path) -> Vec<(&'static str, std::path::PathBuf, Layout, f32)> {
    let v1 = data.join("mobilenet_v1");
    vec![
        (
            "mobilenet_v1_0.25_128_quant_nchw",
            v1.join("quant_uint8/mobilenet_v1_0.25_128_quant.tflite"),
            Layout::Nchw,
            2.0,
        ),
        (
            "vww_96_int8_nhwc",
            v1.join("vww/vww_96_int8.tflite"),
            Layout::Nhwc,
            0.0,
        ),
    ]
}

/// The logits our integer engine computes for the fixed input (the softmax's input where the
/// graph ends with one), dequantized, and their quantization step.
fn our_logits(graph: &Graph, bytes: &[u8], path: &Path) -> (Vec<f32>, f32) {
    let model = QuantizedModel::from_bytes(bytes, path).expect("our engine runs it");
    let signed = model.kind() == mobilenet::tflite::ElementType::I8;
    let input: Vec<i32> = (0..model.reference().input_len)
        .map(|i| ((i * 7919) % 256) as i32 - if signed { 128 } else { 0 })
        .collect();
    let mut outputs = Vec::new();
    model
        .reference()
        .run(&input, &mut |_, out| outputs.push(out.to_vec()));
    let last = graph.ops.last().expect("operators");
    let (logits, tensor) = match last.kind {
        OpKind::Softmax { .. } => (
            &outputs[outputs.len() - 2],
            last.inputs[0].expect("the softmax's input"),
        ),
        _ => (&outputs[outputs.len() - 1], last.outputs[0]),
    };
    let q = graph.tensors[tensor]
        .quantization
        .as_ref()
        .expect("quantized");
    let (s, z) = (q.scale[0], q.zero_point[0] as f32);
    (logits.iter().map(|&v| s * (v as f32 - z)).collect(), s)
}

#[test]
fn qdq_exports_are_the_bytes_onnx_runtime_ran_and_agree_with_our_engine() {
    let Some(data) = common::shared_data("qdq_exports") else {
        return;
    };
    let fixture: serde_json::Value = serde_json::from_str(FIXTURE).expect("the fixture parses");
    let exports: Vec<_> = models(&data)
        .into_iter()
        .map(|(name, path, layout, steps)| {
            let bytes = std::fs::read(&path).expect("the .tflite");
            let graph = read(&bytes, &path).expect("reads");
            let onnx = export_qdq(&graph, &path, layout, None).expect("exports");
            if let Some(dir) = std::env::var_os("MOBILENET_WRITE_EXPORTS") {
                std::fs::write(Path::new(&dir).join(format!("{name}.onnx")), &onnx)
                    .expect("should succeed");
            }
            (name, path, bytes, graph, onnx, steps)
        })
        .collect();
    for (name, path, bytes, graph, onnx, steps) in exports {
        let want = &fixture["models"][name];
        assert_eq!(want["bytes"], onnx.len(), "{name}: file length");
        assert_eq!(
            want["fnv1a64"],
            format!("{:016x}", fnv1a(&onnx)),
            "{name}: the exported bytes changed; regenerate the fixture if on purpose"
        );
        let theirs = common::f32s(&want["ort_logits"]);
        let (ours, step) = our_logits(&graph, &bytes, &path);
        assert_eq!(ours.len(), theirs.len(), "{name}");
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs() / step)
            .fold(0.0, f32::max);
        eprintln!("{name}: our logits within {worst:.1} steps of ONNX Runtime's");
        assert!(worst <= steps, "{name}: {worst} steps apart");
        let top = |v: &[f32]| {
            (0..v.len())
                .max_by(|&a, &b| v[a].total_cmp(&v[b]))
                .expect("classes")
        };
        assert_eq!(top(&ours), top(&theirs), "{name}: the top class");
    }
}

#[test]
fn float_models_wrong_labels_and_importing_the_export_are_refused() {
    let Some(data) = common::shared_data("qdq_refusals") else {
        return;
    };
    let path = data.join("mobilenet_v1/vww/vww_96_float.tflite");
    let bytes = std::fs::read(&path).expect("the .tflite");
    let graph = read(&bytes, &path).expect("reads");
    let err = export_qdq(&graph, &path, Layout::Nchw, None).expect_err("float");
    assert!(err.to_string().contains("F32"), "{err}");

    let path = data.join("mobilenet_v1/vww/vww_96_int8.tflite");
    let bytes = std::fs::read(&path).expect("the .tflite");
    let graph = read(&bytes, &path).expect("reads");
    let three = ["a", "b", "c"].map(String::from);
    let err = export_qdq(&graph, &path, Layout::Nchw, Some(&three)).expect_err("3 labels");
    assert!(err.to_string().contains("3 labels for 2 outputs"), "{err}");

    // Reading an int8 export back as a float model is refused, saying what to do.
    let onnx = export_qdq(&graph, &path, Layout::Nchw, None).expect("exports");
    let err = mobilenet::import::import_bytes(&onnx, Path::new("q.onnx"), &Default::default())
        .expect_err("quantized");
    assert!(err.to_string().contains("a quantized ONNX graph"), "{err}");
}
