//! Detectors in int8: a detector file calibrated and quantized into a `.tflite` graph, read
//! back, run by the integer engine byte for byte as the reference interpreter (which follows
//! TFLite's reference kernels: `scripts/litert_parity.py` compares a quantized face detector's
//! outputs with LiteRT's), and face-api's detector in int8 finding the faces float finds.

mod common;

use std::path::Path;

use image::RgbImage;
use mobilenet::detect::tfjs::import_face_api;
use mobilenet::detect::{
    calibrator, fit, quantize_detector, Agreement, AnyDetector, Detector, DetectorConfig,
    DetectorFile, QuantDetector,
};
use mobilenet::int8::QuantEngine;
use mobilenet::preprocess::load_image;
use mobilenet::{tflite, AnyModel};
use mobilenet_kernels::int8::IntIsa;

/// Smooth gradients with noise: something like photographs to calibrate and test on.
fn image(seed: u32, w: u32, h: u32) -> RgbImage {
    let mut rng = mobilenet::Rng::new(seed as u64);
    let (a, b) = (1 + seed % 5, 2 + seed % 3);
    RgbImage::from_fn(w, h, |x, y| {
        let v = |c: u32| ((x * a + y * b + c * 70 + seed * 31) % 256) as f32;
        let noise = |r: &mut mobilenet::Rng| (r.uniform() - 0.5) * 40.0;
        image::Rgb([0, 1, 2].map(|c| (v(c) + noise(&mut rng)).clamp(0.0, 255.0) as u8))
    })
}

/// `file` calibrated on `images` and quantized, as the bytes of a `.tflite` file.
fn quantize(file: &DetectorFile, images: &[RgbImage]) -> Vec<u8> {
    let side = file.config.input;
    let mut cal = calibrator(file).expect("calibrator");
    let inputs: Vec<f32> = images
        .iter()
        .flat_map(|img| {
            let mut x = vec![0.0; side * side * 3];
            fit(img, &file.config, &mut x);
            x
        })
        .collect();
    cal.observe(&inputs, 2);
    cal.observe_histogram(&inputs, 2);
    let graph = quantize_detector(file, &cal.finish()).expect("quantize");
    tflite::write(&graph)
}

/// A small random detector: face-api's layout at α 0.25 on a 128-pixel input, or SSD300's
/// with symmetric padding (explicit PADs in the graph) on 96 pixels.
fn small_detectors() -> Vec<DetectorFile> {
    let mut face = DetectorConfig::face_api();
    face.input = 128;
    face.alpha = 0.25;
    let mut ssd = DetectorConfig::ssd300(4, vec!["a".into(), "b".into(), "c".into()]);
    ssd.input = 96;
    ssd.alpha = 0.25;
    ssd.padding = mobilenet::Padding::Symmetric;
    ssd.extra_depths = vec![64, 32, 32, 16];
    [face, ssd]
        .into_iter()
        .enumerate()
        .map(|(i, c)| DetectorFile::random(c, 7 + i as u64).expect("random detector"))
        .collect()
}

#[test]
fn integer_engine_runs_quantized_detectors_as_the_reference_does() {
    for file in small_detectors() {
        let config = &file.config;
        let images: Vec<RgbImage> = (0..4).map(|s| image(s, 160, 120)).collect();
        let bytes = quantize(&file, &images);
        let q = QuantDetector::from_bytes(&bytes, Path::new("small.tflite")).expect("read back");
        assert_eq!(
            q.config(),
            config,
            "the configuration travels in the metadata"
        );
        let side = config.input;
        let mut x = vec![0.0; side * side * 3];
        let mut input = vec![0u8; side * side * 3];
        for isa in IntIsa::available() {
            let engine = QuantEngine::with_isa(q.reference(), isa).expect("plan");
            let mut session = engine.session(2);
            for seed in [11, 12] {
                fit(&image(seed, 150, 170), config, &mut x);
                q.quantize_input(&x, &mut input);
                session.run(&input);
                let values: Vec<i32> = input.iter().map(|&b| b as i32 - 128).collect();
                let (_, want) = q.reference().run_with_heads(&values, &mut |_, _| {});
                assert_eq!(want.len(), 2 * config.maps_count());
                assert_eq!(session.heads(), &want[..], "{} {isa:?}", config.name);
            }
        }
        // Every anchor gets a box and its labels' scores, decoded as float does.
        let float = Detector::new(&file).expect("plan");
        let mut fs = float.session(1);
        let mut qs = q.session(1);
        fit(&image(13, 128, 128), config, &mut x);
        let (f, i) = (fs.run(&x), qs.run(&x));
        assert_eq!(i.boxes.len(), float.anchors().len());
        assert_eq!(i.scores.len(), f.scores.len());
        // How far int8 moves each box from float's, against how far float's is from its
        // anchor: relative error of the predicted offsets.
        let (mut moved, mut offset) = (0f64, 0f64);
        for ((a, b), anchor) in f.boxes.iter().zip(&i.boxes).zip(float.anchors()) {
            for k in 0..4 {
                moved += ((a[k] - b[k]) as f64).powi(2);
                offset += ((a[k] - anchor[k]) as f64).powi(2);
            }
        }
        let rel = (moved / offset).sqrt();
        let score_err = f
            .scores
            .iter()
            .zip(&i.scores)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Measured: 5.7% and 0.005 on both.
        assert!(
            rel < 0.15,
            "{}: relative box offset error {rel}",
            config.name
        );
        assert!(score_err < 0.02, "{}: score error {score_err}", config.name);
    }
}

#[test]
fn quantized_detector_files_are_checked() {
    let file = small_detectors().remove(0);
    let bytes = quantize(&file, &[image(1, 64, 64)]);
    let path = Path::new("face.tflite");
    // Metadata that does not describe the graph.
    let mut graph = tflite::read(&bytes, path).expect("read");
    let meta = graph
        .metadata
        .iter_mut()
        .find(|(n, _)| n == mobilenet::detect::DETECTOR_METADATA)
        .expect("metadata");
    let mut config: DetectorConfig = serde_json::from_slice(&meta.1).expect("config");
    config.input = 160;
    meta.1 = serde_json::to_vec(&config).expect("json");
    let err = QuantDetector::from_bytes(&tflite::write(&graph), path).expect_err("wrong input");
    assert!(err.to_string().contains("input shape"), "{err}");
    config.input = 128;
    config.classes = 4;
    config.labels.push("extra".into());
    let meta = graph
        .metadata
        .iter_mut()
        .find(|(n, _)| n == mobilenet::detect::DETECTOR_METADATA)
        .expect("metadata");
    meta.1 = serde_json::to_vec(&config).expect("json");
    let err = QuantDetector::from_bytes(&tflite::write(&graph), path).expect_err("classes");
    assert!(err.to_string().contains("predictor 1"), "{err}");
    // An output dropped.
    let mut graph = tflite::read(&bytes, path).expect("read");
    graph.outputs.pop();
    let err = QuantDetector::from_bytes(&tflite::write(&graph), path).expect_err("outputs");
    assert!(err.to_string().contains("outputs"), "{err}");
    // Garbage metadata.
    let mut graph = tflite::read(&bytes, path).expect("read");
    for (n, d) in &mut graph.metadata {
        if n == mobilenet::detect::DETECTOR_METADATA {
            *d = b"{not json".to_vec();
        }
    }
    let err = QuantDetector::from_bytes(&tflite::write(&graph), path).expect_err("metadata");
    assert!(err.to_string().contains("does not parse"), "{err}");
    // Each kind of file sends the user to the command that runs it.
    let det =
        std::env::temp_dir().join(format!("mobilenet-det-int8-{}.tflite", std::process::id()));
    std::fs::write(&det, &bytes).expect("write");
    assert!(mobilenet::detect::is_detector_file(&det));
    let err = AnyModel::load(&det).expect_err("a detector is no classifier");
    assert!(err.to_string().contains("mobilenet detect"), "{err}");
    assert!(matches!(
        AnyDetector::load(&det).expect("load"),
        AnyDetector::Int8(_)
    ));
    std::fs::remove_file(&det).expect("clean up");
}

#[test]
fn quantized_face_detector_finds_the_faces_float_finds() {
    let Some(data) = common::shared_data("quantized_face_detector_finds_the_faces_float_finds")
    else {
        return;
    };
    let dir = data.join("detection/ssd_mobilenet_v1_face");
    let file = import_face_api(&dir.join("ssd_mobilenetv1_model-weights_manifest.json"))
        .expect("import face-api's manifest");
    // Calibration: 16 COCO128 photos (people among other things).
    let mut names: Vec<_> = std::fs::read_dir(data.join("detection/coco128/images"))
        .expect("coco128")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let images: Vec<RgbImage> = names
        .iter()
        .step_by(8)
        .map(|p| load_image(p).expect("image"))
        .collect();
    let bytes = quantize(&file, &images);
    let q = QuantDetector::from_bytes(&bytes, Path::new("face.tflite")).expect("read back");
    let float = Detector::new(&file).expect("plan");
    let (mut fs, mut qs) = (float.session(2), q.session(2));
    let mut agreement = Agreement::default();
    for name in ["images/face.jpg", "images/grace_hopper.png"] {
        let img = load_image(&data.join(name)).expect("image");
        let (f, _) = fs.detect(&img, None);
        let (i, _) = qs.detect(&img, None);
        agreement.add(&f, &i, 0.5);
    }
    // Five faces in float (face-api's), the same five in int8: boxes overlap by 0.9 or more,
    // scores within 0.02 (measured: IoU ≥ 0.94, scores within 0.008).
    assert_eq!(agreement.reference, 5, "{agreement:?}");
    assert_eq!(agreement.other, 5, "{agreement:?}");
    assert_eq!(agreement.matched, 5, "{agreement:?}");
    assert!(agreement.iou_min >= 0.9, "{agreement:?}");
    assert!(agreement.score_diff_max <= 0.02, "{agreement:?}");
}
