//! `mobilenet classify`: top-k classes for image files.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use mobilenet::classify::{top_k, Prediction};
use mobilenet::import::read_labels;
use mobilenet::preprocess::load_image;
use mobilenet::quantized::{AnyModel, QuantizedModel};
use mobilenet::InferenceModel;
use mobilenet_kernels::pool::softmax;
use rayon::prelude::*;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Model file (from `mobilenet import`, `train` or `quantize`), or a quantized .tflite
    #[arg(long)]
    model: PathBuf,
    /// Class labels, one per line (overrides the model's; e.g. imagenet_labels_1001.txt for
    /// Google's .tflite files)
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Images to classify (JPEG, PNG, BMP, WebP)
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Number of classes to print per image
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Central-crop fraction before resizing (default: the model's, 0.875 for ImageNet models;
    /// 1.0 keeps the whole image)
    #[arg(long)]
    crop: Option<f32>,
    /// Images per forward pass
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Worker threads (default: all cores)
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// One JSON object per image per line
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ImageJson<'a> {
    image: String,
    top: &'a [Prediction],
}

pub fn run(args: &ClassifyArgs) -> Result<()> {
    if let Some(crop) = args.crop {
        if !(crop > 0.0 && crop <= 1.0) {
            bail!("--crop {crop} is out of range: it must be in (0, 1]");
        }
    }
    let mut file = match AnyModel::load(&args.model)? {
        AnyModel::Quantized(model) => return run_quantized(args, model),
        AnyModel::Float(file) => file,
    };
    if let Some(path) = &args.labels {
        file.labels = Some(read_labels(path)?);
        file.validate(&args.model)?;
    }
    if file.config.classes().is_none() {
        bail!("{}: the model has no classifier head", args.model.display());
    }
    let model = InferenceModel::new(&file);
    let mut pre = *model.preprocessing();
    if let Some(crop) = args.crop {
        pre.crop = crop;
    }
    let res = model.config().resolution();
    let batch = args.batch.clamp(1, args.images.len().max(1));
    let mut session = model.session(batch, args.threads);
    let classes = model.output_len();
    let mut failures = 0usize;
    let mut probs = vec![0.0; classes];
    for paths in args.images.chunks(batch) {
        // Decode and preprocess in parallel; a bad file is reported and skipped.
        let decoded: Vec<_> = paths
            .par_iter()
            .map(|path| {
                load_image(path).map(|img| {
                    let mut x = vec![0.0; model.input_len()];
                    pre.apply(&img, res, &mut x);
                    x
                })
            })
            .collect();
        let mut good = Vec::new();
        let mut input = Vec::with_capacity(batch * model.input_len());
        for (path, result) in paths.iter().zip(decoded) {
            match result {
                Ok(x) => {
                    input.extend_from_slice(&x);
                    good.push(path);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    failures += 1;
                }
            }
        }
        if good.is_empty() {
            continue;
        }
        // The session runs a fixed batch; pad a short last batch with zeros.
        input.resize(batch * model.input_len(), 0.0);
        let logits = session.run(&input);
        for (path, row) in good.iter().zip(logits.chunks(classes)) {
            softmax(row, &mut probs);
            print_top(path, &top_k(&probs, args.top, model.labels()), args.json)?;
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} images could not be classified",
            args.images.len()
        );
    }
    Ok(())
}

fn print_top(path: &std::path::Path, top: &[Prediction], json: bool) -> Result<()> {
    if json {
        let line = ImageJson {
            image: path.display().to_string(),
            top,
        };
        println!("{}", serde_json::to_string(&line)?);
    } else {
        println!("{}", path.display());
        for p in top {
            println!(
                "  {:>6.2}%  {:>4}  {}",
                100.0 * p.probability,
                p.class,
                p.label
            );
        }
    }
    Ok(())
}

/// Quantized `.tflite` models: the integer engine, one image at a time on all threads.
fn run_quantized(args: &ClassifyArgs, mut model: QuantizedModel) -> Result<()> {
    if model.classes().is_none() {
        bail!("{}: the model has no classifier head", args.model.display());
    }
    if let Some(path) = &args.labels {
        let labels = read_labels(path)?;
        if Some(labels.len()) != model.classes() {
            bail!(
                "{}: {} labels for a model with {} classes",
                path.display(),
                labels.len(),
                model.classes().unwrap_or(0)
            );
        }
        model.set_labels(labels);
    }
    if let Some(crop) = args.crop {
        model.set_crop(crop);
    }
    let mut session = model.session(args.threads);
    let mut failures = 0usize;
    for path in &args.images {
        match load_image(path) {
            Ok(img) => {
                let probs = model.probabilities(session.run(&model.input_bytes(&img)));
                print_top(path, &top_k(&probs, args.top, model.labels()), args.json)?;
            }
            Err(e) => {
                eprintln!("error: {e}");
                failures += 1;
            }
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} images could not be classified",
            args.images.len()
        );
    }
    Ok(())
}
