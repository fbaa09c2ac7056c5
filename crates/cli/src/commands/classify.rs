//! `mobilenet classify`: top-k classes for image files.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use mobilenet::classify::{top_k, Prediction};
use mobilenet::import::read_labels;
use mobilenet::preprocess::load_image_with;
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
    #[arg(long, default_value_t = 0, value_parser = crate::threads_arg)]
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
    if args.top == 0 {
        bail!("--top 0 prints nothing: give at least 1");
    }
    let mut model = mobilenet::classifier::load(&args.model)?;
    let Some(classes) = model.classes() else {
        bail!("{}: the model has no classifier head", args.model.display());
    };
    if let Some(path) = &args.labels {
        let labels = read_labels(path)?;
        if labels.len() != classes {
            bail!(
                "{}: {} labels for a model with {classes} classes",
                path.display(),
                labels.len()
            );
        }
        model.set_labels(labels)?;
    }
    if let Some(crop) = args.crop {
        model.set_crop(crop);
    }
    let batch = args.batch.clamp(1, args.images.len().max(1));
    let mut runner = model.try_runner(batch, args.threads)?;
    let mut failures = 0usize;
    let mut probs = vec![0.0; batch * classes];
    for paths in args.images.chunks(batch) {
        // Decode, crop and resize in parallel; a bad file is reported and skipped.
        let decoded: Vec<_> = paths
            .par_iter()
            .map(|path| load_image_with(path, |img| model.pixels(img)))
            .collect();
        let mut good = Vec::new();
        let mut pixels = Vec::with_capacity(batch * model.pixels_len());
        for (path, result) in paths.iter().zip(decoded) {
            match result {
                Ok(x) => {
                    pixels.extend_from_slice(&x);
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
        // The runner takes a fixed batch; a short last batch is padded.
        runner.load(&pixels);
        runner.run();
        runner.probabilities(&mut probs);
        for (path, row) in good.iter().zip(probs.chunks(classes)) {
            if row.iter().any(|p| !p.is_finite()) {
                eprintln!(
                    "error: {}: the model gives non-finite probabilities (its weights overflow f32)",
                    path.display()
                );
                failures += 1;
                continue;
            }
            print_top(path, &top_k(row, args.top, model.labels()), args.json)?;
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
