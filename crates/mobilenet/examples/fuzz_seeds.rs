//! Writes the seed corpus of the fuzz targets (`fuzz/corpus/*`): a tiny valid model file,
//! TF-slim- and Keras-named weight files, small images in each supported format, small data
//! sets in each layout `Dataset::open` reads (as the `data` target's archives), and the
//! checkpoint of a one-epoch run.
//!
//! `cargo run -p mobilenet --example fuzz_seeds -- fuzz/corpus`

use std::path::PathBuf;

use mobilenet::weights::{ModelFile, Tensor};
use mobilenet::MobileNetConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    for dir in [
        "model_file",
        "import",
        "image",
        "tflite",
        "data",
        "checkpoint",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    // The smallest network: every layer at min_depth 8, 32×32 input, 2 classes.
    let config = MobileNetConfig::new(0.01, 32)?.with_classes(2)?;
    let mut model = ModelFile::random(config, 7);
    model.labels = Some(vec!["no".into(), "yes".into()]);
    let bytes = model.to_bytes()?;
    std::fs::write(root.join("model_file/tiny.safetensors"), &bytes)?;
    std::fs::write(root.join("import/native.safetensors"), &bytes)?;

    // The same weights under TF-slim names, as `import` reads them.
    let tf: std::collections::BTreeMap<String, Tensor> = model
        .tensors()
        .iter()
        .map(|(name, t)| {
            (
                tf_name(name),
                Tensor::new(tf_shape(name, &t.shape), t.data.clone()),
            )
        })
        .collect();
    let views: Vec<_> = tf
        .iter()
        .map(|(n, t)| {
            let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n.clone(), t.shape.clone(), bytes)
        })
        .collect();
    let tensors: Vec<_> = views
        .iter()
        .map(|(n, s, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .expect("consistent view");
            (n.clone(), view)
        })
        .collect();
    std::fs::write(
        root.join("import/tf_slim.safetensors"),
        safetensors::serialize(tensors, None)?,
    )?;

    // A minimal TFLite flatbuffer (one RESHAPE on two float tensors), for the TFLite reader.
    let tflite = tiny_tflite();
    std::fs::write(root.join("tflite/reshape.tflite"), &tflite)?;
    // Whole MobileNets that the matcher and the integer engine accept: every layer at the
    // minimum depth of 8 channels (α = 8/1024), 32×32, int8 through `quantize`, with symmetric
    // padding (PAD ops) and with TF SAME.
    for (name, padding) in [
        ("int8_symmetric", mobilenet::Padding::Symmetric),
        ("int8_same", mobilenet::Padding::TfSame),
    ] {
        let config = mobilenet::MobileNetConfig::new(8.0 / 1024.0, 32)?
            .with_classes(3)?
            .with_padding(padding);
        let model = mobilenet::ModelFile::random(config, 5);
        let mut cal = mobilenet::int8::Calibrator::new(&model).expect("calibrator");
        let images: Vec<f32> = (0..2 * cal.input_len())
            .map(|i| ((i * 37) % 255) as f32 / 127.5 - 1.0)
            .collect();
        cal.observe(&images, 1);
        let graph = mobilenet::int8::quantize(&model, &cal.finish())?;
        std::fs::write(
            root.join(format!("tflite/{name}.tflite")),
            mobilenet::tflite::write(&graph),
        )?;
    }
    // An int8 detector at the same minimum depths (face-api's layout on 32×32 inputs).
    {
        let mut config = mobilenet::detect::DetectorConfig::face_api();
        config.input = 32;
        config.alpha = 8.0 / 1024.0;
        config.extra_depths = vec![8, 8, 8, 8];
        let file = mobilenet::detect::DetectorFile::random(config, 5)?;
        let mut cal = mobilenet::detect::calibrator(&file)?;
        let images: Vec<f32> = (0..2 * cal.input_len())
            .map(|i| ((i * 37) % 255) as f32 / 127.5 - 1.0)
            .collect();
        cal.observe(&images, 1);
        let graph = mobilenet::detect::quantize_detector(&file, &cal.finish())?;
        std::fs::write(
            root.join("tflite/int8_detector.tflite"),
            mobilenet::tflite::write(&graph),
        )?;
    }
    std::fs::write(root.join("import/reshape.tflite"), &tflite)?;

    for (name, format) in [
        ("a.png", image::ImageFormat::Png),
        ("a.jpg", image::ImageFormat::Jpeg),
        ("a.bmp", image::ImageFormat::Bmp),
        ("a.webp", image::ImageFormat::WebP),
    ] {
        let img =
            image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([(x * 40) as u8, (y * 80) as u8, 9]));
        img.save_with_format(root.join("image").join(name), format)?;
    }
    let gray = image::GrayImage::from_fn(4, 4, |x, y| image::Luma([(x * y * 15) as u8]));
    gray.save_with_format(root.join("image/gray.png"), image::ImageFormat::Png)?;
    data_seeds(&root.join("data"))?;
    checkpoint_seed(&root.join("checkpoint"))?;
    Ok(())
}

/// An archive of the `data` fuzz target: `[name length: u8][name][length: u16 LE][contents]`.
fn archive(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, contents) in files {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(contents.len() as u16).to_le_bytes());
        out.extend_from_slice(contents);
    }
    out
}

fn encoded(format: image::ImageFormat, shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(6, 4, |x, y| {
        image::Rgb([(x * 40) as u8, (y * 60) as u8, shade])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, format).expect("encode");
    bytes.into_inner()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn data_seeds(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use image::ImageFormat::{Bmp, Jpeg, Png, WebP};
    let folder = archive(&[
        ("ant/0.png", encoded(Png, 1)),
        ("ant/1.jpg", encoded(Jpeg, 2)),
        ("bee/0.bmp", encoded(Bmp, 3)),
        ("bee/1.webp", encoded(WebP, 4)),
    ]);
    std::fs::write(dir.join("image_folder"), folder)?;
    // Two 4×4 images with labels 3 and 7.
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 4];
    images.extend((0..32).map(|i| (i * 8) as u8));
    let labels = vec![0, 0, 8, 1, 0, 0, 0, 2, 3, 7];
    let idx = archive(&[
        ("x-images-idx3-ubyte", images.clone()),
        ("x-labels-idx1-ubyte", labels.clone()),
    ]);
    std::fs::write(dir.join("idx"), idx)?;
    let idx_gz = archive(&[
        ("t10k-images-idx3-ubyte.gz", gzip(&images)),
        ("t10k-labels-idx1-ubyte.gz", gzip(&labels)),
    ]);
    std::fs::write(dir.join("idx_gz"), idx_gz)?;
    let mut record = vec![4u8];
    record.extend((0..3072).map(|i| (i % 251) as u8));
    std::fs::write(dir.join("cifar"), archive(&[("data_batch_1.bin", record)]))?;
    Ok(())
}

/// The checkpoint of one epoch of the smallest network on 16 built-in images.
fn checkpoint_seed(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use mobilenet::data::{Augment, Dataset};
    use mobilenet::train::optim::{OptimizerKind, Schedule};
    use mobilenet::train::trainer::{EpochMetrics, Progress, TrainOptions, Trainer};

    struct Quiet;
    impl Progress for Quiet {
        fn step(&mut self, _: usize, _: usize, _: usize, _: f32, _: f32, _: f32) {}
        fn epoch(&mut self, _: &EpochMetrics, _: &[EpochMetrics]) {}
    }
    let all = Dataset::builtin_fashion_mnist();
    let (train, val) = (
        all.subset(&(0..16).collect::<Vec<_>>()),
        all.subset(&(16..24).collect::<Vec<_>>()),
    );
    let config = MobileNetConfig::new(0.01, 32)?.with_classes(10)?;
    let model = ModelFile::random(config, 7);
    let options = TrainOptions {
        epochs: 1,
        batch_size: 8,
        lr: 0.01,
        schedule: Schedule::Cosine { warmup_epochs: 0.0 },
        optimizer: OptimizerKind::paper(),
        weight_decay: 4e-5,
        label_smoothing: 0.1,
        bn_decay: 0.9,
        augment: Augment::None,
        seed: 1,
        threads: 1,
        loader_workers: 1,
        freeze_epochs: 0,
        head_lr: None,
        freeze_through: None,
        precision: mobilenet::Precision::F32,
        unfreeze_lr_scale: 1.0,
        patience: None,
        freeze_bn: false,
        distill: None,
    };
    let run = std::env::temp_dir().join(format!("mobilenet-seed-run-{}", std::process::id()));
    let mut trainer = Trainer::new(&model, options, &run)?;
    trainer.run(&train, &val, &mut Quiet)?;
    drop(trainer);
    std::fs::copy(
        run.join("checkpoint.safetensors"),
        dir.join("one_epoch.safetensors"),
    )?;
    std::fs::remove_dir_all(&run)?;
    Ok(())
}

fn tf_name(ours: &str) -> String {
    let (layer, rest) = ours.split_once('/').unwrap_or((ours, ""));
    if layer == "fc" {
        let leaf = if rest == "weight" {
            "weights"
        } else {
            "biases"
        };
        return format!("MobilenetV1/Logits/Conv2d_1c_1x1/{leaf}");
    }
    let i = layer.trim_start_matches("conv_");
    let (kind, rest) = match rest.split_once('/') {
        Some(("depthwise", r)) => ("_depthwise", r),
        Some(("pointwise", r)) => ("_pointwise", r),
        _ => ("", rest),
    };
    let scope = format!("MobilenetV1/Conv2d_{i}{kind}");
    match rest {
        "weight" if kind == "_depthwise" => format!("{scope}/depthwise_weights"),
        "weight" => format!("{scope}/weights"),
        bn => format!("{scope}/BatchNorm/{}", bn.trim_start_matches("bn/")),
    }
}

fn tf_shape(ours: &str, shape: &[usize]) -> Vec<usize> {
    match shape {
        [k, k2, c] if ours.ends_with("depthwise/weight") => vec![*k, *k2, *c, 1],
        [cin, cout] if ours.ends_with("weight") => vec![1, 1, *cin, *cout],
        _ => shape.to_vec(),
    }
}

fn tiny_tflite() -> Vec<u8> {
    use mobilenet::tflite::{ElementType, Graph, OpInfo, OpKind, TensorInfo};
    let tensor = |data: Vec<u8>| TensorInfo {
        name: String::new(),
        shape: vec![4],
        kind: ElementType::F32,
        data,
        quantization: None,
    };
    mobilenet::tflite::write(&Graph {
        tensors: vec![tensor(vec![0; 16]), tensor(Vec::new())],
        ops: vec![OpInfo {
            kind: OpKind::Reshape,
            inputs: vec![Some(0), Some(0)],
            outputs: vec![1],
        }],
        inputs: vec![0],
        outputs: vec![1],
        metadata: Vec::new(),
    })
}
