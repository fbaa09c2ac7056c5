//! `mobilenet import`: convert TF-slim, Keras, timm, TFLite or ONNX weights into our model
//! file.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use mobilenet::detect::tfjs::{import_face_api, is_manifest};
use mobilenet::import::{import, read_labels, ImportOptions, SourceFormat};
use mobilenet::preprocess::PixelNorm;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Weight file to convert (safetensors with TF-slim, Keras or timm names, a .tflite
    /// MobileNet v1, or an .onnx one with batch norm folded; the format is detected), or face-api's
    /// SSD-MobileNet v1 weights manifest (.json, its .bin beside it) into a detector file
    input: PathBuf,
    /// Where to write the model file
    #[arg(short, long)]
    output: PathBuf,
    /// Class labels, one per line, one per model output (e.g. imagenet_labels_1001.txt)
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Input resolution the model will run at (default 224)
    #[arg(long)]
    resolution: Option<usize>,
    /// Per-channel mean of the [0, 1] input the weights were trained with, as timm's
    /// pretrained_cfg gives it (e.g. 0.485,0.456,0.406); needs --std. Default: the source
    /// format's own (x/127.5 − 1 for TF-slim, Keras and timm's MobileNet v1 weights)
    #[arg(long, value_delimiter = ',', value_name = "R,G,B", requires = "std")]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation to go with --mean (e.g. 0.229,0.224,0.225)
    #[arg(long, value_delimiter = ',', value_name = "R,G,B", requires = "mean")]
    std: Option<Vec<f32>>,
    /// Fraction of the image's shorter side the centre crop keeps (timm's crop_pct; 0.875
    /// unless the source says otherwise)
    #[arg(long)]
    crop: Option<f32>,
}

/// The normalisation `--mean`/`--std` ask for, checked.
fn norm(args: &ImportArgs) -> Result<Option<PixelNorm>> {
    let (Some(mean), Some(std)) = (&args.mean, &args.std) else {
        return Ok(None);
    };
    for (flag, v) in [("--mean", mean), ("--std", std)] {
        if v.len() != 3 {
            bail!(
                "{flag} takes three numbers, one per RGB channel (R,G,B); got {}",
                v.len()
            );
        }
    }
    if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        bail!("--std {s} is out of range: each must be a positive number");
    }
    if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
        bail!("--mean {m} is not a number");
    }
    Ok(Some(PixelNorm::MeanStd {
        mean: [mean[0], mean[1], mean[2]],
        std: [std[0], std[1], std[2]],
    }))
}

/// The centre crop `--crop` asks for, checked.
fn crop(args: &ImportArgs) -> Result<Option<f32>> {
    match args.crop {
        Some(c) if !(c > 0.0 && c <= 1.0) => {
            bail!("--crop {c} is out of range: it must be in (0, 1]")
        }
        c => Ok(c),
    }
}

pub fn run(args: &ImportArgs) -> Result<()> {
    let options = ImportOptions {
        resolution: args.resolution,
        labels: args.labels.as_deref().map(read_labels).transpose()?,
        norm: norm(args)?,
        crop: crop(args)?,
    };
    if crate::same_file(&args.input, &args.output) {
        bail!(
            "{}: -o names the input file; write the model to another path",
            args.output.display()
        );
    }
    if is_manifest(&args.input) {
        return import_detector(args);
    }
    let (model, format) = import(&args.input, &options)?;
    model.save(&args.output)?;
    let source = match format {
        SourceFormat::Native => "mobilenet",
        SourceFormat::TfSlim => "TF-slim",
        SourceFormat::Keras => "Keras",
        SourceFormat::Timm => "timm",
        SourceFormat::Tflite => "TFLite",
        SourceFormat::Onnx => "ONNX",
    };
    let params: usize = model.tensors().values().map(|t| t.data.len()).sum();
    println!(
        "{}: {source} weights → {} ({} tensors, {:.2} M values)",
        args.input.display(),
        args.output.display(),
        model.tensors().len(),
        params as f64 / 1e6
    );
    println!("{}", model.config);
    println!("input: {}", model.preprocessing);
    if model.labels.is_none() {
        println!("no labels: classify will print class indices (pass --labels to embed them)");
    }
    Ok(())
}

/// face-api's TF.js manifest into a detector file.
fn import_detector(args: &ImportArgs) -> Result<()> {
    if args.labels.is_some()
        || args.resolution.is_some()
        || args.mean.is_some()
        || args.crop.is_some()
    {
        bail!("--labels, --resolution, --mean, --std and --crop apply to classifiers; the face detector has its own");
    }
    let detector = import_face_api(&args.input)?;
    detector.save(&args.output)?;
    let values: usize = detector
        .backbone
        .tensors()
        .values()
        .chain(detector.tensors.values())
        .map(|t| t.data.len())
        .sum();
    println!(
        "{}: face-api SSD-MobileNet v1 (TF.js, uint8-quantized) → {} ({:.2} M values)",
        args.input.display(),
        args.output.display(),
        values as f64 / 1e6
    );
    let c = &detector.config;
    println!(
        "detector {:?}: {}×{} input, {} feature maps, classes {:?}; run it with `mobilenet detect --model {} IMAGE…`",
        c.name,
        c.input,
        c.input,
        c.maps_count(),
        c.labels,
        args.output.display()
    );
    Ok(())
}
