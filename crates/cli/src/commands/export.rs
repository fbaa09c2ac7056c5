//! `mobilenet export`: a float model as a file another runtime loads. Float TFLite today
//! (TFLite and LiteRT run it; `classify` and `import` read it back with its labels and
//! preprocessing); ONNX is refused with a clear message until its writer lands.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use mobilenet::import::{import, read_labels, ImportOptions};
use mobilenet::tflite::{float_graph, write};
use mobilenet::weights::write_atomic;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Float TFLite: NHWC f32 input normalised as the model expects, logits out
    Tflite,
    /// ONNX (not written yet: refused)
    Onnx,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Float model: a model file, TF-slim/Keras safetensors or a float .tflite
    #[arg(long)]
    model: PathBuf,
    /// What to write
    #[arg(long, value_enum)]
    format: Format,
    /// Where to write it
    #[arg(short, long)]
    output: PathBuf,
    /// Class labels, one per line (when the model has none), written into the file
    #[arg(long)]
    labels: Option<PathBuf>,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    if args.format == Format::Onnx {
        bail!(
            "--format onnx: not implemented yet (the ONNX writer is still to come); \
             --format tflite writes a float .tflite (tf2onnx converts one to ONNX)"
        );
    }
    if crate::same_file(&args.model, &args.output) {
        bail!(
            "{}: -o names the input model; write the export to another path",
            args.output.display()
        );
    }
    let options = ImportOptions {
        resolution: None,
        labels: args.labels.as_deref().map(read_labels).transpose()?,
    };
    let (file, _) = import(&args.model, &options)?;
    let graph = float_graph(&file)?;
    let bytes = write(&graph);
    write_atomic(&args.output, &bytes)?;
    let r = file.config.resolution();
    eprintln!(
        "wrote {} ({} bytes): {}, input [1, {r}, {r}, 3] f32 normalised as {:?}, output {}",
        args.output.display(),
        bytes.len(),
        file.config,
        file.preprocessing.norm,
        match file.config.classes() {
            Some(c) => format!("[1, {c}] logits"),
            None => "pooled features".to_string(),
        }
    );
    Ok(())
}
