//! Parity with TensorFlow on Google's float MobileNet 1.0-224 weights.
//!
//! `../shared/data/reference/mobilenet_v1_expected.json` holds the 1001 logits TensorFlow 2.21
//! computed from the original frozen graph for each reference image, and for grace_hopper the
//! statistics of all 27 ReLU6 outputs. Our logits must match within 1e-3 with the same top-5.

mod common;

use std::path::Path;

use mobilenet::import::{import, read_labels, ImportOptions, SourceFormat};
use mobilenet::preprocess::{load_image, PixelNorm, Preprocessing};
use mobilenet::{Fusion, InferenceModel, LayerKind, ModelFile};
use mobilenet_kernels::Isa;

/// Largest allowed |ours − TensorFlow| over the 1001 logits.
const LOGIT_TOLERANCE: f32 = 1e-3;

fn float_model(data: &Path) -> ModelFile {
    let options = ImportOptions {
        resolution: None,
        labels: Some(read_labels(&data.join("imagenet/imagenet_labels_1001.txt")).expect("labels")),
        ..Default::default()
    };
    let path = data.join("mobilenet_v1/float/mobilenet_v1_1.0_224_imagenet_float.safetensors");
    let (model, format) = import(&path, &options).expect("import TF-slim weights");
    assert_eq!(format, SourceFormat::TfSlim);
    model
}

fn input(data: &Path, png: &str) -> Vec<f32> {
    let img = load_image(&data.join(png)).expect("reference input");
    let pre = Preprocessing {
        crop: 1.0,
        norm: PixelNorm::MinusOneToOne,
    };
    let mut x = vec![0.0; 224 * 224 * 3];
    pre.apply(&img, 224, &mut x);
    x
}

fn top5(logits: &[f32]) -> Vec<usize> {
    mobilenet::classify::top_k(logits, 5, None)
        .iter()
        .map(|p| p.class)
        .collect()
}

fn float_cases(expected: &serde_json::Value) -> Vec<&serde_json::Value> {
    expected["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| c.get("logits").is_some())
        .collect()
}

#[test]
fn logits_match_tensorflow_for_every_isa() {
    let Some(data) = common::shared_data("logits_match_tensorflow") else {
        return;
    };
    let expected = common::expected(&data);
    let model = float_model(&data);
    let cases = float_cases(&expected);
    assert_eq!(cases.len(), 6, "six float reference cases");
    let plans = Isa::available().into_iter().flat_map(|isa| {
        [Fusion::Separable, Fusion::None].map(|f| {
            (
                isa,
                f,
                InferenceModel::with_options(&model, isa, f).expect("plan"),
            )
        })
    });
    for (isa, fusion, plan) in plans {
        let mut session = plan.session(1, 1);
        for case in &cases {
            let png = case["input"].as_str().expect("input");
            let want = common::f32s(&case["logits"]);
            let got = session.run(&input(&data, png)).to_vec();
            let max_err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                max_err <= LOGIT_TOLERANCE,
                "{isa} {png}: max |Δlogit| {max_err}"
            );
            let want_top5: Vec<usize> = case["top5_softmax"]
                .as_array()
                .expect("top5")
                .iter()
                .map(|t| t["index"].as_u64().expect("index") as usize)
                .collect();
            assert_eq!(top5(&got), want_top5, "{isa} {fusion:?} {png}: top-5");
        }
    }
}

#[test]
fn batched_and_threaded_runs_give_the_same_logits() {
    let Some(data) = common::shared_data("batched_and_threaded") else {
        return;
    };
    let expected = common::expected(&data);
    let model = InferenceModel::new(&float_model(&data)).expect("plan");
    let cases = float_cases(&expected);
    let batch: Vec<f32> = cases
        .iter()
        .flat_map(|c| input(&data, c["input"].as_str().expect("input")))
        .collect();
    let mut session = model.session(cases.len(), 2);
    let out = session.run(&batch).to_vec();
    for (case, got) in cases.iter().zip(out.chunks(1001)) {
        let want = common::f32s(&case["logits"]);
        let max_err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            max_err <= LOGIT_TOLERANCE,
            "batch of 6, 2 threads: {max_err}"
        );
    }
}

#[test]
fn grace_hopper_activations_match_tensorflow() {
    let Some(data) = common::shared_data("grace_hopper_activations") else {
        return;
    };
    let expected = common::expected(&data);
    let case = float_cases(&expected)
        .into_iter()
        .find(|c| c.get("activation_stats").is_some())
        .expect("the case with activation stats");
    let stats = case["activation_stats"].as_array().expect("stats");
    assert_eq!(stats.len(), 27);
    // Unfused, so that every depthwise output is materialised and observed.
    let model = InferenceModel::with_options(&float_model(&data), Isa::detect(), Fusion::None)
        .expect("plan");
    let mut session = model.session(1, 1);
    let mut seen = 0;
    session.run_observed(
        &input(&data, case["input"].as_str().expect("input")),
        &mut |layer, out| {
            if layer.kind == LayerKind::AvgPool || layer.kind == LayerKind::Fc {
                return;
            }
            let s = &stats[seen];
            seen += 1;
            let scope = layer_scope(&layer.name);
            let tensor = s["tensor"].as_str().expect("tensor");
            assert_eq!(
                tensor,
                format!("MobilenetV1/MobilenetV1/{scope}/Relu6"),
                "layer order"
            );
            let shape: Vec<usize> = s["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as usize)
                .collect();
            assert_eq!(shape[1..], layer.output, "{tensor} shape");
            let n = out.len() as f64;
            let mean = out.iter().map(|&x| x as f64).sum::<f64>() / n;
            let var = out.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
            let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let close = |a: f64, b: f64, what: &str| {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{tensor} {what}: ours {a}, TF {b}"
                );
            };
            close(mean, s["mean"].as_f64().expect("mean"), "mean");
            close(var.sqrt(), s["std"].as_f64().expect("std"), "std");
            close(max as f64, s["max"].as_f64().expect("max"), "max");
            for (i, (&ours, tf)) in out.iter().zip(common::f32s(&s["first8_nhwc"])).enumerate() {
                assert!(
                    (ours - tf).abs() <= 1e-4,
                    "{tensor} value {i}: ours {ours}, TF {tf}"
                );
            }
        },
    );
    assert_eq!(seen, 27);
}

/// `conv_3/depthwise` → `Conv2d_3_depthwise`, `conv_0` → `Conv2d_0`.
fn layer_scope(name: &str) -> String {
    let rest = name.strip_prefix("conv_").expect("conv layer");
    match rest.split_once('/') {
        Some((i, kind)) => format!("Conv2d_{i}_{kind}"),
        None => format!("Conv2d_{rest}"),
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// bf16 GEMMs (8 significant bits) against TensorFlow's f32 logits: the same top-1 on every
/// reference image, every fusion, batch 1 and a threaded batch, probabilities within 0.02
/// (measured on Zen 5: 0.0095 at most; max |Δlogit| 0.25) —
/// and not the f32 numbers (the bf16 kernels did run: logits move by more than f32's 1e-3).
#[test]
fn bf16_keeps_tensorflows_top1() {
    let Some(data) = common::shared_data("bf16_keeps_tensorflows_top1") else {
        return;
    };
    if !mobilenet_kernels::gemm::bf16::bf16_supported() {
        println!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let expected = common::expected(&data);
    let model = float_model(&data);
    let cases = float_cases(&expected);
    let inputs: Vec<f32> = cases
        .iter()
        .flat_map(|c| input(&data, c["input"].as_str().expect("input")))
        .collect();
    for fusion in [Fusion::None, Fusion::Separable, Fusion::Pipeline] {
        let mut plan = InferenceModel::with_options(&model, Isa::detect(), fusion).expect("plan");
        plan.set_precision(mobilenet::Precision::Bf16)
            .expect("bf16 on a CPU with AVX512-BF16");
        for (batch, threads) in [(1, 1), (cases.len(), 2)] {
            let mut session = plan.session(batch, threads);
            let mut got = Vec::new();
            for x in inputs.chunks(batch * 224 * 224 * 3) {
                got.extend_from_slice(session.run(x));
            }
            let (mut max_dp, mut max_dl) = (0.0f32, 0.0f32);
            for (case, logits) in cases.iter().zip(got.chunks(1001)) {
                let want = common::f32s(&case["logits"]);
                let png = case["input"].as_str().expect("input");
                assert_eq!(top5(logits)[0], top5(&want)[0], "{fusion:?} {png}: top-1");
                let (p, q) = (softmax(logits), softmax(&want));
                for (a, b) in p.iter().zip(&q) {
                    max_dp = max_dp.max((a - b).abs());
                }
                for (a, b) in logits.iter().zip(&want) {
                    max_dl = max_dl.max((a - b).abs());
                }
            }
            println!("{fusion:?} batch {batch}: max |Δp| {max_dp:.4}, max |Δlogit| {max_dl:.3}");
            assert!(
                max_dp <= 0.02,
                "{fusion:?} batch {batch}: max |Δp| {max_dp}"
            );
            assert!(max_dl > 10.0 * LOGIT_TOLERANCE, "bf16 gave f32's logits");
        }
    }
}
