//! Post-training quantization: a float model, calibrated and quantized, written as `.tflite`,
//! read back and run by the integer engine. The engine must equal the bit-exact reference
//! interpreter on every ISA, and its dequantized logits must track the float model's.

use std::path::Path;

use mobilenet::int8::QuantizedModel;
use mobilenet::int8::{quantize, Calibrator};
use mobilenet::{
    Activation, Classifier, InferenceModel, MobileNetConfig, ModelFile, Padding, Stem,
};
use mobilenet_kernels::int8::IntIsa;

/// Deterministic "images": smooth colour gradients with noise, as 8-bit pixels.
fn images(n: usize, res: usize, seed: u32) -> Vec<Vec<u8>> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    (0..n)
        .map(|_| {
            let (a, b, c) = (next() % 7, next() % 5, next() % 255);
            (0..res * res * 3)
                .map(|i| {
                    let (y, x, ch) = (i / (3 * res), i / 3 % res, i % 3);
                    ((y * a as usize + x * b as usize + ch * 60 + c as usize) % 256) as u8
                        ^ (next() % 24) as u8
                })
                .collect()
        })
        .collect()
}

fn normalise(px: &[u8]) -> Vec<f32> {
    px.iter().map(|&p| p as f32 / 127.5 - 1.0).collect()
}

fn check(config: MobileNetConfig, what: &str) {
    let res = config.resolution();
    let mut file = ModelFile::random(config, 7);
    file.labels = Some((0..10).map(|i| format!("class {i}")).collect());
    let calib = images(16, res, 11);
    let mut cal = Calibrator::new(&file).expect("calibrator");
    let flat: Vec<f32> = calib.iter().flat_map(|p| normalise(p)).collect();
    cal.observe(&flat, 2);
    let graph = quantize(&file, &cal.finish()).expect("test setup");
    let bytes = mobilenet::tflite::write(&graph);
    let path = Path::new("ptq.tflite");
    let q = QuantizedModel::from_bytes(&bytes, path).expect("test setup");
    assert_eq!(q.classes(), Some(10), "{what}");
    assert_eq!(q.config().padding(), file.config.padding(), "{what}");
    assert_eq!(q.labels().expect("test setup")[3], "class 3");
    let float = InferenceModel::new(&file).expect("plan");
    let mut fs = float.session(1, 1);
    let (mut agree, mut err, mut spread) = (0, 0.0f64, 0.0f64);
    let test = images(12, res, 99);
    for px in &test {
        let want = q.reference().run(
            &px.iter().map(|&p| p as i32 - 128).collect::<Vec<_>>(),
            &mut |_, _| {},
        );
        for isa in IntIsa::available() {
            let e = mobilenet::int8::QuantEngine::with_isa(q.reference(), isa).expect("test setup");
            for threads in [1, 2] {
                let mut s = e.session(threads);
                assert_eq!(s.run(px), &want[..], "{what}: {isa}, {threads} threads");
            }
        }
        let (s, z) = q.reference().output;
        let logits: Vec<f32> = want.iter().map(|&v| s * (v - z) as f32).collect();
        let f = fs.run(&normalise(px)).to_vec();
        let argmax = |v: &[f32]| {
            (0..v.len())
                .max_by(|&a, &b| v[a].total_cmp(&v[b]))
                .expect("test setup")
        };
        agree += usize::from(argmax(&f) == argmax(&logits));
        for (a, b) in f.iter().zip(&logits) {
            err += ((a - b) as f64).powi(2);
            spread += (*a as f64).powi(2);
        }
    }
    // Bounds: measured 0.044–0.048 relative RMS and 12/12 agreement for these three models
    // (2026-11-28); 8-bit activations through 28 layers leave about 5%, so 10% and 10 of 12
    // flag a broken scale, bias or padding without flaking on rounding.
    let rel = (err / spread).sqrt();
    println!("{what}: top-1 agreement {agree}/12, relative logit error {rel:.4}");
    assert!(
        rel < 0.1,
        "{what}: int8 logits are {rel:.3} (relative RMS) away from float"
    );
    assert!(agree >= 10, "{what}: top-1 agrees on {agree} of 12 images");
}

#[test]
fn quantized_models_match_the_reference_interpreter_and_track_float() {
    let base = MobileNetConfig::new(0.25, 32)
        .expect("test setup")
        .with_classes(10)
        .expect("test setup");
    check(base, "TF SAME, standard stem");
    check(
        base.with_padding(Padding::Symmetric)
            .with_stem(Stem::SmallInput),
        "symmetric padding, small-input stem",
    );
    check(
        base.with_activation(Activation::Relu)
            .with_padding(Padding::Symmetric),
        "ReLU, symmetric",
    );
}

mod common;

/// The check on real weights: Google's float 1.0-224, calibrated on 64 COCO photos
/// and quantized, keeps TensorFlow's top-1 class on all six reference images.
#[test]
fn quantized_official_float_model_keeps_the_reference_top1() {
    let Some(data) = common::shared_data("quantized_official_float_model_keeps_the_reference_top1")
    else {
        return;
    };
    let options = mobilenet::import::ImportOptions::default();
    let path = data.join("mobilenet_v1/float/mobilenet_v1_1.0_224_imagenet_float.safetensors");
    let (file, _) = mobilenet::import::import(&path, &options).expect("import");
    let mut photos: Vec<_> = std::fs::read_dir(data.join("detection/coco128/images"))
        .expect("coco128")
        .map(|e| e.expect("entry").path())
        .collect();
    photos.sort();
    let mut cal = Calibrator::new(&file).expect("calibrator");
    let batch: Vec<f32> = photos
        .iter()
        .step_by(2)
        .take(64)
        .flat_map(|p| {
            let img = mobilenet::preprocess::load_image(p).expect("photo");
            let mut x = vec![0.0; 224 * 224 * 3];
            file.preprocessing.apply(&img, 224, &mut x);
            x
        })
        .collect();
    for chunk in batch.chunks(16 * 224 * 224 * 3) {
        cal.observe(chunk, 0);
    }
    for chunk in batch.chunks(16 * 224 * 224 * 3) {
        cal.observe_histogram(chunk, 0);
    }
    let graph = quantize(&file, &cal.finish()).expect("quantize");
    let mut q =
        QuantizedModel::from_bytes(&mobilenet::tflite::write(&graph), Path::new("q.tflite"))
            .expect("read back");
    // The reference inputs are already 224×224 and were fed uncropped.
    q.set_crop(1.0);
    let expected = common::expected(&data);
    let mut session = q.session(0);
    let mut checked = 0;
    for case in expected["cases"].as_array().expect("cases") {
        let Some(logits) = case.get("logits") else {
            continue;
        };
        let want = common::f32s(logits);
        let want_top1 = (0..want.len())
            .max_by(|&a, &b| want[a].total_cmp(&want[b]))
            .expect("classes");
        let img =
            mobilenet::preprocess::load_image(&data.join(case["input"].as_str().expect("input")))
                .expect("reference image");
        let p = q.probabilities(session.run(&q.pixels(&img)));
        let got = (0..p.len())
            .max_by(|&a, &b| p[a].total_cmp(&p[b]))
            .expect("classes");
        assert_eq!(got, want_top1, "{}", case["input"]);
        checked += 1;
    }
    assert_eq!(checked, 6);
}

/// Quantization parameters TFLite would refuse — a zero point outside the type, a negative or
/// NaN scale, weights whose zero point pushes them past 16 bits — are errors naming the
/// tensor, never a panic. (The fuzzer found the depthwise case.)
#[test]
fn impossible_quantization_parameters_are_errors() {
    let config = MobileNetConfig::new(8.0 / 1024.0, 32)
        .expect("config")
        .with_classes(3)
        .expect("classes");
    let file = ModelFile::random(config, 5);
    let mut cal = Calibrator::new(&file).expect("calibrator");
    let images: Vec<f32> = (0..2 * cal.input_len())
        .map(|i| ((i * 37) % 255) as f32 / 127.5 - 1.0)
        .collect();
    cal.observe(&images, 1);
    let graph = quantize(&file, &cal.finish()).expect("quantize");
    let path = Path::new("bad.tflite");
    assert!(QuantizedModel::from_bytes(&mobilenet::tflite::write(&graph), path).is_ok());
    let dw = graph
        .tensors
        .iter()
        .position(|t| t.name == "conv_1/depthwise/weights")
        .expect("depthwise weights");
    let out = graph
        .tensors
        .iter()
        .position(|t| t.name == "conv_0/output")
        .expect("stem output");
    type Corrupt = Box<dyn Fn(&mut mobilenet::tflite::Graph)>;
    let cases: [(&str, Corrupt); 4] = [
        (
            "zero point 1000",
            Box::new(move |g| g.tensors[dw].quantization.as_mut().expect("q").zero_point[0] = 1000),
        ),
        (
            "zero point -129",
            Box::new(move |g| {
                g.tensors[out].quantization.as_mut().expect("q").zero_point[0] = -129
            }),
        ),
        (
            "scale -",
            Box::new(move |g| g.tensors[out].quantization.as_mut().expect("q").scale[0] = -0.5),
        ),
        (
            "scale NaN",
            Box::new(move |g| g.tensors[dw].quantization.as_mut().expect("q").scale[0] = f32::NAN),
        ),
    ];
    for (want, corrupt) in cases {
        let mut g = graph.clone();
        corrupt(&mut g);
        let err = QuantizedModel::from_bytes(&mobilenet::tflite::write(&g), path)
            .expect_err(want)
            .to_string();
        assert!(
            err.contains(want) && err.contains("bad.tflite"),
            "{want}: {err}"
        );
    }
}
