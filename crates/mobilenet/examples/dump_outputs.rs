//! Writes the raw outputs of every runtime on the reference images to one file, so that a
//! refactoring can be checked to change no bit: build this example before and after, run both
//! on the same data and compare the files (`cmp before.bin after.bin`).
//!
//! `cargo run --release -p mobilenet --example dump_outputs -- ../shared/data out.bin`
//!
//! Covers the f32 engine on Google's 1.0-224 weights and on a seeded random 0.25-128 model for
//! every instruction set, fusion mode and a few batch/thread splits; the integer engine on
//! Google's uint8 files and the VWW int8 model for every integer instruction set; the bytes of
//! a post-training-quantized file; and one training step's loss and gradients.

use std::io::Write;
use std::path::Path;

use mobilenet::import::{import, ImportOptions};
use mobilenet::int8::QuantizedModel;
use mobilenet::int8::{quantize, Calibrator};
use mobilenet::preprocess::{load_image, PixelNorm, Preprocessing};
use mobilenet::train::net::{StepOptions, TrainNet};
use mobilenet::train::Rng;
use mobilenet::{Classifier, Fusion, InferenceModel, MobileNetConfig, ModelFile};
use mobilenet_kernels::int8::IntIsa;
use mobilenet_kernels::Isa;

const IMAGES: [&str; 5] = [
    "cat.png",
    "chelsea.png",
    "coffee.png",
    "grace_hopper.png",
    "parrot.jpg",
];

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, data, out] = &args[..] else {
        return Err("usage: dump_outputs <shared/data> <out.bin>".into());
    };
    let data = Path::new(data);
    let mut out = std::io::BufWriter::new(std::fs::File::create(out)?);
    let images: Vec<_> = IMAGES
        .iter()
        .map(|n| load_image(&data.join("images").join(n)))
        .collect::<Result<_, _>>()?;
    let pre = Preprocessing {
        crop: 1.0,
        norm: PixelNorm::MinusOneToOne,
    };

    // f32: Google's weights and a random small model.
    let path = data.join("mobilenet_v1/float/mobilenet_v1_1.0_224_imagenet_float.safetensors");
    let (google, _) = import(&path, &ImportOptions::default())?;
    let small = ModelFile::random(MobileNetConfig::new(0.25, 128)?, 11);
    for (name, model) in [("1.0_224", &google), ("0.25_128", &small)] {
        let res = model.config.resolution();
        let mut input = vec![0.0; images.len() * res * res * 3];
        for (img, x) in images.iter().zip(input.chunks_exact_mut(res * res * 3)) {
            pre.apply(img, res, x);
        }
        for isa in Isa::available() {
            for fusion in [Fusion::None, Fusion::Separable, Fusion::Pipeline] {
                let plan = InferenceModel::with_options(model, isa, fusion).expect("plan");
                for (batch, threads) in [(1, 1), (1, 2), (5, 1), (5, 2)] {
                    let mut session = plan.session(batch, threads);
                    for chunk in input.chunks_exact(batch * res * res * 3) {
                        let y = session.run(chunk);
                        writeln!(out, "f32 {name} {isa} {fusion:?} b{batch} t{threads}")?;
                        out.write_all(&f32_bytes(y))?;
                    }
                }
            }
        }
    }

    // int8: Google's uint8 files and the VWW int8 model, every integer instruction set.
    let quant = [
        "mobilenet_v1/quant_uint8/mobilenet_v1_0.25_128_quant.tflite",
        "mobilenet_v1/quant_uint8/mobilenet_v1_0.5_160_quant.tflite",
        "mobilenet_v1/vww/vww_96_int8.tflite",
    ];
    for file in quant {
        let q = QuantizedModel::load(&data.join(file))?;
        let reference = q.reference();
        for isa in IntIsa::available() {
            let engine = mobilenet::int8::QuantEngine::with_isa(reference, isa)?;
            for threads in [1, 2] {
                let mut session = engine.session(threads);
                for img in &images {
                    let y = session.run(&q.pixels(img));
                    writeln!(out, "int8 {file} {isa} t{threads}")?;
                    let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
                    out.write_all(&bytes)?;
                }
            }
        }
    }

    // Post-training quantization of the random small model, calibrated on the images.
    let mut calibrator = Calibrator::new(&small).expect("calibrator");
    let res = small.config.resolution();
    let mut input = vec![0.0; images.len() * res * res * 3];
    for (img, x) in images.iter().zip(input.chunks_exact_mut(res * res * 3)) {
        pre.apply(img, res, x);
    }
    calibrator.observe(&input, 2);
    let graph = quantize(&small, &calibrator.finish())?;
    writeln!(out, "ptq 0.25_128")?;
    out.write_all(&mobilenet::tflite::write(&graph))?;

    // One training step on a small model: loss and every gradient.
    let config = MobileNetConfig::new(0.25, 64)?.with_classes(4)?;
    let model = ModelFile::random(config, 5);
    for threads in [1, 2] {
        let mut net = TrainNet::from_model(&model, threads)?;
        let mut rng = Rng::new(1);
        let x: Vec<f32> = (0..4 * 64 * 64 * 3).map(|_| rng.normal()).collect();
        let mut grads = net.zero_gradients();
        let stats = net.step(
            &x,
            &[0, 1, 2, 3],
            &mut Rng::new(2),
            &StepOptions::default(),
            &mut grads,
        );
        writeln!(out, "train t{threads} loss {}", stats.loss)?;
        for g in &grads {
            out.write_all(&f32_bytes(g))?;
        }
    }
    Ok(())
}
