//! Writes the seed corpus of the fuzz targets (`fuzz/corpus/*`): a tiny valid model file,
//! TF-slim- and Keras-named weight files, and small images in each supported format.
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
    for dir in ["model_file", "import", "image", "tflite"] {
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
