//! `mobilenet import`: convert TF-slim or Keras weights into our model file.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use mobilenet::detect::tfjs::{import_face_api, is_manifest};
use mobilenet::import::{import, read_labels, ImportOptions, SourceFormat};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Weight file to convert (safetensors with TF-slim or Keras names, a .tflite MobileNet v1,
    /// or an .onnx one with batch norm folded; the format is detected), or face-api's
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
}

pub fn run(args: &ImportArgs) -> Result<()> {
    let options = ImportOptions {
        resolution: args.resolution,
        labels: args.labels.as_deref().map(read_labels).transpose()?,
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
    if model.labels.is_none() {
        println!("no labels: classify will print class indices (pass --labels to embed them)");
    }
    Ok(())
}

/// face-api's TF.js manifest into a detector file.
fn import_detector(args: &ImportArgs) -> Result<()> {
    if args.labels.is_some() || args.resolution.is_some() {
        bail!("--labels and --resolution apply to classifiers; the face detector has its own");
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
