//! `mobilenet classify`: top-k classes for image files and folders of them.

use std::path::{Path, PathBuf};

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
    /// Images to classify (JPEG, PNG, BMP, WebP), or folders of them (searched recursively)
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Number of classes to print per image (at most the model's class count)
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
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV on stdout: a header, then one row per image (image, then label and probability of
    /// each of the top classes)
    #[arg(long)]
    csv: bool,
    /// For a quantized .tflite: tflite (TFLite's fixed-point requantization, the bytes of its
    /// reference kernels) or xnnpack (XNNPACK's single-precision one: faster, the bytes of
    /// TFLite with its default XNNPACK delegate)
    #[arg(long, value_enum, default_value_t = crate::RequantArg::Tflite)]
    requant: crate::RequantArg,
    /// For a float model: f32, or bf16 (the 1×1 convolutions and classifier with bf16
    /// activations and weights summed in f32: about twice the multiply-adds per instruction,
    /// 8 significant bits; needs AVX512-BF16)
    #[arg(long, value_enum, default_value_t = crate::PrecisionArg::F32)]
    precision: crate::PrecisionArg,
}

/// How the predictions are printed.
#[derive(Clone, Copy, PartialEq)]
enum Format {
    Text,
    Json,
    Csv,
}

/// The image files named by `paths`: files as given, folders searched recursively for image
/// files (sorted by path; hidden files and folders skipped).
pub(crate) fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if is_image_name(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let before = files.len();
            walk(path, &mut files)?;
            if files.len() == before {
                bail!(
                    "{}: the folder holds no JPEG, PNG, BMP or WebP files",
                    path.display()
                );
            }
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn is_image_name(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "jpg" | "jpeg" | "png" | "bmp" | "webp"
        )
    })
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
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
    let images = expand(&args.images)?;
    let format = match (args.json, args.csv) {
        (true, _) => Format::Json,
        (_, true) => Format::Csv,
        _ => Format::Text,
    };
    let mut model =
        mobilenet::classifier::load_with(&args.model, args.requant.into(), args.precision.into())?;
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
    let top = args.top.min(classes);
    if format == Format::Csv {
        let columns: Vec<String> = (1..=top)
            .map(|k| format!("label_{k},probability_{k}"))
            .collect();
        println!("image,{}", columns.join(","));
    }
    let batch = args.batch.clamp(1, images.len().max(1));
    let mut runner = model.try_runner(batch, args.threads)?;
    let mut failures = 0usize;
    let mut probs = vec![0.0; batch * classes];
    for paths in images.chunks(batch) {
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
            print_top(path, &top_k(row, top, model.labels()), format)?;
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} images could not be classified",
            images.len()
        );
    }
    Ok(())
}

fn print_top(path: &Path, top: &[Prediction], format: Format) -> Result<()> {
    if format == Format::Json {
        let line = ImageJson {
            image: path.display().to_string(),
            top,
        };
        println!("{}", serde_json::to_string(&line)?);
    } else if format == Format::Csv {
        let cells: Vec<String> = top
            .iter()
            .map(|p| format!("{},{:.6}", csv_field(&p.label), p.probability))
            .collect();
        println!(
            "{},{}",
            csv_field(&path.display().to_string()),
            cells.join(",")
        );
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
