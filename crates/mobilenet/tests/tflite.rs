//! Reading `.tflite` MobileNets: the files in `../shared/data` are recognised with the right
//! configuration; the float VWW detector reproduces LiteRT's float outputs; the uint8 ImageNet
//! models, dequantized to float, give LiteRT's top-1; the integer engine gives the bytes of
//! LiteRT's reference kernels and, with XNNPACK's requantization, of LiteRT's XNNPACK delegate;
//! malformed files are clear errors.

mod common;

use std::path::Path;

use flatbuffers::FlatBufferBuilder;
use mobilenet::import::{import, ImportOptions, SourceFormat};
use mobilenet::int8::{QuantEngine, QuantModel, Requantization};
use mobilenet::preprocess::load_image;
use mobilenet::tflite::{read, MobileNetGraph};
use mobilenet::{Activation, InferenceModel};
use mobilenet_kernels::int8::IntIsa;

#[test]
fn shared_tflite_files_are_recognised() {
    let Some(data) = common::shared_data("shared_tflite_files_are_recognised") else {
        return;
    };
    let cases = [
        (
            "mobilenet_v1/quant_uint8/mobilenet_v1_0.25_128_quant.tflite",
            0.25,
            128,
            Some(1001),
            Activation::Relu6,
        ),
        (
            "mobilenet_v1/quant_uint8/mobilenet_v1_0.5_160_quant.tflite",
            0.5,
            160,
            Some(1001),
            Activation::Relu6,
        ),
        (
            "mobilenet_v1/quant_uint8/mobilenet_v1_0.75_192_quant.tflite",
            0.75,
            192,
            Some(1001),
            Activation::Relu6,
        ),
        (
            "mobilenet_v1/quant_uint8/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
            1.0,
            224,
            None,
            Activation::Relu6,
        ),
        (
            "mobilenet_v1/vww/vww_96_float.tflite",
            0.25,
            96,
            Some(2),
            Activation::Relu,
        ),
        (
            "mobilenet_v1/vww/vww_96_int8.tflite",
            0.25,
            96,
            Some(2),
            Activation::Relu,
        ),
    ];
    for (file, alpha, res, classes, act) in cases {
        let path = data.join(file);
        let bytes = std::fs::read(&path).expect("read");
        let graph = read(&bytes, &path).unwrap_or_else(|e| panic!("{e}"));
        let net = MobileNetGraph::from_graph(&graph, &path).unwrap_or_else(|e| panic!("{e}"));
        let c = net.config;
        assert_eq!(
            (c.alpha(), c.resolution(), c.classes(), c.activation()),
            (alpha, res, classes, act),
            "{file}"
        );
        assert_eq!(net.softmax, classes.is_some(), "{file}");
    }
}

fn vww_input(data: &Path, png: &str) -> Vec<f32> {
    let img = load_image(&data.join(png)).expect("reference input");
    img.pixels()
        .flat_map(|p| p.0.map(|v| v as f32 / 255.0))
        .collect()
}

#[test]
fn vww_float_matches_litert() {
    let Some(data) = common::shared_data("vww_float_matches_litert") else {
        return;
    };
    let expected = common::expected(&data);
    let path = data.join("mobilenet_v1/vww/vww_96_float.tflite");
    let (model, format) = import(&path, &ImportOptions::default()).expect("import");
    assert_eq!(format, SourceFormat::Tflite);
    let plan = InferenceModel::new(&model).expect("plan");
    let mut session = plan.session(1, 1);
    let mut n = 0;
    for case in expected["cases"].as_array().expect("cases") {
        let Some(want) = case.get("float_softmax") else {
            continue;
        };
        let want = common::f32s(want);
        let logits = session
            .run(&vww_input(&data, case["input"].as_str().expect("input")))
            .to_vec();
        let mut got = vec![0.0; 2];
        mobilenet_kernels::pool::softmax(&logits, &mut got);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-5,
                "{}: ours {got:?}, LiteRT {want:?}",
                case["input"]
            );
        }
        n += 1;
    }
    assert_eq!(n, 8);
}

#[test]
fn dequantized_uint8_models_give_litert_top1() {
    let Some(data) = common::shared_data("dequantized_uint8_models_give_litert_top1") else {
        return;
    };
    let expected = common::expected(&data);
    let mut checked = 0;
    for case in expected["cases"].as_array().expect("cases") {
        let Some(out) = case.get("output_uint8") else {
            continue;
        };
        let file = case["model"].as_str().expect("model");
        if file.contains("embedding") {
            continue;
        }
        let (model, _) = import(&data.join(file), &ImportOptions::default()).expect("import");
        let plan = InferenceModel::new(&model).expect("plan");
        let res = plan.config().resolution();
        let img = load_image(&data.join(case["input"].as_str().expect("input"))).expect("input");
        let mut x = vec![0.0; res * res * 3];
        plan.preprocessing().apply(&img, res, &mut x);
        let logits = plan.session(1, 1).run(&x).to_vec();
        let ours = mobilenet::classify::top_k(&logits, 1, None)[0].class;
        let reference: Vec<u64> = out
            .as_array()
            .expect("bytes")
            .iter()
            .map(|v| v.as_u64().expect("u8"))
            .collect();
        let max = reference.iter().max().copied();
        let theirs: Vec<usize> = (0..reference.len())
            .filter(|&i| Some(reference[i]) == max)
            .collect();
        assert!(
            theirs.contains(&ours),
            "{file} {}: ours {ours}, LiteRT {theirs:?}",
            case["input"]
        );
        checked += 1;
    }
    assert_eq!(checked, 18);
}

fn quant_model(path: &Path) -> QuantModel {
    let bytes = std::fs::read(path).expect("read model");
    let graph = read(&bytes, path).unwrap_or_else(|e| panic!("{e}"));
    let net = MobileNetGraph::from_graph(&graph, path).unwrap_or_else(|e| panic!("{e}"));
    QuantModel::new(&graph, &net, path).unwrap_or_else(|e| panic!("{e}"))
}

/// The reference input PNG as quantized values `x − offset` (0 for uint8 models, 128 for int8).
fn quant_input(data: &Path, case: &serde_json::Value, offset: i32) -> Vec<i32> {
    let img = load_image(&data.join(case["input"].as_str().expect("input"))).expect("input");
    img.pixels()
        .flat_map(|p| p.0.map(|v| v as i32 - offset))
        .collect()
}

fn ints(v: &serde_json::Value) -> Vec<i32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("integer") as i32)
        .collect()
}

/// Every instruction set of the fast engine, on one and two threads, gives `want`.
fn fast_engines_agree(model: &QuantModel, input: &[i32], want: &[i32], what: &str) {
    for isa in IntIsa::available() {
        let engine = QuantEngine::with_isa(model, isa).unwrap_or_else(|e| panic!("{e}"));
        let bytes: Vec<u8> = input.iter().map(|&q| engine.to_byte(q)).collect();
        for threads in [1, 2] {
            let mut session = engine.session(threads);
            let got = session.run(&bytes);
            let differ = got.iter().zip(want).filter(|(g, w)| g != w).count();
            assert_eq!(
                (got.len(), differ),
                (want.len(), 0),
                "{what}: fast engine ({isa}, {threads} threads) differs in {differ} values"
            );
        }
    }
}

#[test]
fn integer_engine_reproduces_litert_uint8_bytes() {
    let Some(data) = common::shared_data("integer_engine_reproduces_litert_uint8_bytes") else {
        return;
    };
    let expected = common::expected(&data);
    let mut models = std::collections::HashMap::new();
    let mut checked = 0;
    for case in expected["cases"].as_array().expect("cases") {
        let Some(want) = case.get("output_uint8") else {
            continue;
        };
        let file = case["model"].as_str().expect("model");
        let model = models
            .entry(file.to_string())
            .or_insert_with(|| quant_model(&data.join(file)));
        let input = quant_input(&data, case, 0);
        let got = model.run(&input, &mut |_, _| {});
        let want = ints(want);
        fast_engines_agree(model, &input, &want, file);
        let differ = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        assert_eq!(
            (got.len(), differ),
            (want.len(), 0),
            "{file} {}: {differ} of {} bytes differ from LiteRT's reference kernels",
            case["input"],
            want.len()
        );
        checked += 1;
    }
    assert_eq!(checked, 24);
}

#[test]
fn integer_engine_matches_every_litert_activation() {
    let Some(data) = common::shared_data("integer_engine_matches_every_litert_activation") else {
        return;
    };
    let expected = common::expected(&data);
    let dump = &expected["quant_activation_dump"];
    let model = quant_model(&data.join(dump["model"].as_str().expect("model")));
    // Activations in graph order (the dump also lists weights, which have a batch of 1 and
    // are skipped by name: activations end in Relu6, AvgPool or BiasAdd).
    let reference: Vec<&serde_json::Value> = dump["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .filter(|t| {
            let name = t["tensor"].as_str().expect("name");
            ["Relu6", "AvgPool", "BiasAdd"]
                .iter()
                .any(|end| name.ends_with(end))
        })
        .collect();
    let mut outputs = Vec::new();
    model.run(&quant_input(&data, dump, 0), &mut |_, x| {
        outputs.push(x.to_vec())
    });
    assert!(outputs.len() > reference.len());
    for (t, got) in reference.iter().zip(&outputs) {
        let name = t["tensor"].as_str().expect("name");
        let len: i64 = ints(&t["shape"]).iter().map(|&d| d as i64).product();
        assert_eq!(got.len() as i64, len, "{name}: size");
        let sum: i64 = got.iter().map(|&v| v as i64).sum();
        assert_eq!(sum, t["sum"].as_i64().expect("sum"), "{name}: sum");
        assert_eq!(got[..16], ints(&t["first16_nhwc"])[..], "{name}: first 16");
    }
}

#[test]
fn integer_engine_reproduces_litert_int8_vww() {
    let Some(data) = common::shared_data("integer_engine_reproduces_litert_int8_vww") else {
        return;
    };
    let expected = common::expected(&data);
    let model = quant_model(&data.join("mobilenet_v1/vww/vww_96_int8.tflite"));
    let mut checked = 0;
    for case in expected["cases"].as_array().expect("cases") {
        let Some(want) = case.get("int8_output") else {
            continue;
        };
        let input = quant_input(&data, case, 128);
        let got = model.run(&input, &mut |_, _| {});
        assert_eq!(got, ints(want), "{}", case["input"]);
        fast_engines_agree(&model, &input, &got, "vww int8");
        checked += 1;
    }
    assert_eq!(checked, 8);
}

/// With XNNPACK's requantization the engine gives the bytes of LiteRT 2.3 with its XNNPACK
/// delegate (`fixtures/xnnpack_outputs.json`, from `scripts/xnnpack_fixture.py`): every case on
/// the best instruction set, each model's first case on every instruction set at 1 and 2
/// threads (the aarch64 run is emulated, and slow); those bytes differ from the reference
/// kernels' exactly as much as the shared reference file says LiteRT's XNNPACK run did.
#[test]
fn xnnpack_requantization_reproduces_litert_xnnpack_bytes() {
    let Some(data) = common::shared_data("xnnpack_requantization_reproduces_litert_xnnpack_bytes")
    else {
        return;
    };
    let expected = common::expected(&data);
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/xnnpack_outputs.json"))
            .expect("fixture parses");
    let mut models = std::collections::HashMap::new();
    let (mut checked, mut differing) = (0, 0);
    for case in fixture["cases"].as_array().expect("cases") {
        let file = case["model"].as_str().expect("model");
        let first = !models.contains_key(file);
        let model = models
            .entry(file.to_string())
            .or_insert_with(|| quant_model(&data.join(file)));
        let (isas, threads) = match first {
            true => (IntIsa::available(), vec![1, 2]),
            false => (vec![IntIsa::detect()], vec![1]),
        };
        let offset = match model.kind {
            mobilenet::tflite::ElementType::I8 => 128,
            _ => 0,
        };
        let input = quant_input(&data, case, offset);
        let want = ints(&case["output"]);
        // The shared file's account of the XNNPACK run: its largest distance from the
        // reference kernels' bytes.
        if let Some(r) = expected["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .find(|r| {
                r["model"] == case["model"]
                    && r["input"] == case["input"]
                    && r.get("output_uint8").is_some()
            })
        {
            let reference = ints(&r["output_uint8"]);
            let max = want
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .max();
            assert_eq!(
                max,
                r["xnnpack_max_abs_diff"].as_i64().map(|v| v as i32),
                "{file} {}",
                case["input"]
            );
            differing += usize::from(want != reference);
        }
        for isa in isas {
            let engine = QuantEngine::planned(model, isa, Requantization::Xnnpack)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(engine.requantization(), Requantization::Xnnpack);
            let bytes: Vec<u8> = input.iter().map(|&q| engine.to_byte(q)).collect();
            for &threads in &threads {
                let got = engine.session(threads).run(&bytes).to_vec();
                let differ = got.iter().zip(&want).filter(|(g, w)| g != w).count();
                assert_eq!(
                    (got.len(), differ),
                    (want.len(), 0),
                    "{file} {} ({isa}, {threads} threads): {differ} values differ from LiteRT + XNNPACK",
                    case["input"]
                );
            }
        }
        checked += 1;
    }
    assert_eq!((checked, differing), (32, 23));
}

/// A minimal TFLite flatbuffer: one operator of builtin code `op` on two float tensors of
/// shape [n]; tensor 0 has a buffer of `bytes` bytes.
fn tiny_tflite(op: i32, n: i32, bytes: usize) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let data = b.create_vector(&vec![0u8; bytes]);
    let empty = {
        let t = b.start_table();
        b.end_table(t)
    };
    let buf = {
        let t = b.start_table();
        b.push_slot_always(4, data);
        b.end_table(t)
    };
    let buffers = b.create_vector(&[empty, buf]);
    let shape = b.create_vector(&[n]);
    let tensor = |b: &mut FlatBufferBuilder, buffer: u32| {
        let t = b.start_table();
        b.push_slot_always(4, shape);
        b.push_slot::<i8>(6, 0, -1);
        b.push_slot::<u32>(8, buffer, 0);
        b.end_table(t)
    };
    let t0 = tensor(&mut b, 1);
    let t1 = tensor(&mut b, 0);
    let tensors = b.create_vector(&[t0, t1]);
    let ins = b.create_vector(&[0i32, 0]);
    let outs = b.create_vector(&[1i32]);
    let operator = {
        let t = b.start_table();
        b.push_slot::<u32>(4, 0, 1);
        b.push_slot_always(6, ins);
        b.push_slot_always(8, outs);
        b.end_table(t)
    };
    let operators = b.create_vector(&[operator]);
    let g_in = b.create_vector(&[0i32]);
    let g_out = b.create_vector(&[1i32]);
    let subgraph = {
        let t = b.start_table();
        b.push_slot_always(4, tensors);
        b.push_slot_always(6, g_in);
        b.push_slot_always(8, g_out);
        b.push_slot_always(10, operators);
        b.end_table(t)
    };
    let subgraphs = b.create_vector(&[subgraph]);
    let code = {
        let t = b.start_table();
        b.push_slot::<i32>(10, op, -1);
        b.end_table(t)
    };
    let codes = b.create_vector(&[code]);
    let model = {
        let t = b.start_table();
        b.push_slot::<u32>(4, 3, 0);
        b.push_slot_always(6, codes);
        b.push_slot_always(8, subgraphs);
        b.push_slot_always(12, buffers);
        b.end_table(t)
    };
    b.finish(model, Some("TFL3"));
    b.finished_data().to_vec()
}

#[test]
fn malformed_tflite_files_are_clear_errors() {
    let path = Path::new("m.tflite");
    // ADD (builtin 0) is not a MobileNet operator.
    let err = read(&tiny_tflite(0, 4, 16), path).unwrap_err().to_string();
    assert!(
        err.contains("builtin code 0, which MobileNet v1 does not use"),
        "{err}"
    );
    // A buffer shorter than its tensor's shape.
    let err = read(&tiny_tflite(22, 10, 8), path).unwrap_err().to_string();
    assert!(err.contains("needs 40 bytes, its buffer has 8"), "{err}");
    // Every truncation of a valid file is an error, never a panic.
    let good = tiny_tflite(22, 4, 16);
    assert!(read(&good, path).is_ok());
    for len in 0..good.len() {
        assert!(
            read(&good[..len], path).is_err(),
            "truncated to {len} bytes"
        );
    }
    // Flipped bytes: an error or a graph, never a panic.
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0xA5;
        let _ = read(&bad, path).map(|g| MobileNetGraph::from_graph(&g, path));
    }
    let err = read(b"not a flatbuffer at all", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a TFLite file"), "{err}");
}

#[test]
fn shared_models_survive_truncation_and_corruption() {
    let Some(data) = common::shared_data("shared_models_survive_truncation_and_corruption") else {
        return;
    };
    let path = data.join("mobilenet_v1/vww/vww_96_int8.tflite");
    let bytes = std::fs::read(&path).expect("read");
    for len in (0..bytes.len()).step_by(bytes.len() / 97) {
        if let Ok(g) = read(&bytes[..len], &path) {
            let _ = MobileNetGraph::from_graph(&g, &path);
        }
    }
    let mut rng = 0x2545_F491u64;
    for _ in 0..200 {
        let mut bad = bytes.clone();
        for _ in 0..8 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng % bad.len() as u64) as usize;
            bad[i] = (rng >> 32) as u8;
        }
        if let Ok(g) = read(&bad, &path) {
            if let Ok(net) = MobileNetGraph::from_graph(&g, &path) {
                let _ = net.to_model_file(&g, &path);
            }
        }
    }
}

/// The writer is the reader's inverse: every shared file, written back, reads as the same graph
/// (tensors with data and quantization, operators, metadata) — so what `quantize` writes uses
/// the schema the way LiteRT's own files do.
#[test]
fn shared_tflite_files_round_trip_through_the_writer() {
    let Some(data) = common::shared_data("shared_tflite_files_round_trip_through_the_writer")
    else {
        return;
    };
    let mut checked = 0;
    for dir in ["mobilenet_v1/quant_uint8", "mobilenet_v1/vww"] {
        for entry in std::fs::read_dir(data.join(dir)).expect("shared file") {
            let path = entry.expect("shared file").path();
            if path.extension().and_then(|e| e.to_str()) != Some("tflite") {
                continue;
            }
            let graph =
                read(&std::fs::read(&path).expect("shared file"), &path).expect("shared file");
            let bytes = mobilenet::tflite::write(&graph);
            let again = read(&bytes, &path).expect("shared file");
            assert!(
                again == graph,
                "{} changed in the round trip",
                path.display()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

/// A weight tensor whose size does not fit its layer (found by the fuzzer: an empty one) is an
/// error naming the tensor, for the float import and the integer planner alike.
#[test]
fn weights_of_the_wrong_size_are_errors() {
    let Some(data) = common::shared_data("weights_of_the_wrong_size_are_errors") else {
        return;
    };
    for file in [
        "mobilenet_v1/vww/vww_96_float.tflite",
        "mobilenet_v1/vww/vww_96_int8.tflite",
    ] {
        let path = data.join(file);
        let mut graph = read(&std::fs::read(&path).expect("shared file"), &path).expect("reads");
        let net = MobileNetGraph::from_graph(&graph, &path).expect("matches");
        let w = net.layers[1].weights;
        graph.tensors[w].shape = vec![1, 3, 3, 0];
        graph.tensors[w].data.clear();
        let bytes = mobilenet::tflite::write(&graph);
        let err = match mobilenet::import::import_bytes(&bytes, &path, &ImportOptions::default()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{file}: imported a model with an empty depthwise filter"),
        };
        assert!(err.contains(&graph.tensors[w].name), "{file}: {err}");
        if file.contains("int8") {
            let err = mobilenet::int8::QuantizedModel::from_bytes(&bytes, &path)
                .expect_err("the integer planner refuses it too")
                .to_string();
            assert!(err.contains("weights"), "{err}");
        }
    }
}
