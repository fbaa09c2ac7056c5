//! `mobilenet import`: convert TF-slim or Keras weights into our model file.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use mobilenet::import::{import, read_labels, ImportOptions, SourceFormat};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Weight file to convert (safetensors with TF-slim or Keras names, or a .tflite MobileNet v1;
    /// the format is detected)
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
    let (model, format) = import(&args.input, &options)?;
    model.save(&args.output)?;
    let source = match format {
        SourceFormat::Native => "mobilenet",
        SourceFormat::TfSlim => "TF-slim",
        SourceFormat::Keras => "Keras",
        SourceFormat::Tflite => "TFLite",
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
