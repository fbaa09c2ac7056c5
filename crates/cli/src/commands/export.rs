//! `mobilenet export`: a float model as a file another runtime loads: float TFLite (TFLite and
//! LiteRT run it; `classify` and `import` read it back with its labels and preprocessing) or
//! ONNX (opset 13; ONNX Runtime runs it), both with batch norm folded and logits out.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use mobilenet::import::{import, read_labels, ImportOptions};
use mobilenet::onnx::{export_onnx, Layout};
use mobilenet::tflite::{float_graph, write};
use mobilenet::weights::write_atomic;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Float TFLite: NHWC f32 input normalised as the model expects, logits out
    Tflite,
    /// ONNX opset 13: f32 input normalised as the model expects (NCHW unless --layout nhwc),
    /// logits out
    Onnx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputLayout {
    /// [1, 3, R, R]
    Nchw,
    /// [1, R, R, 3]
    Nhwc,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Float model: a model file, TF-slim/Keras safetensors, a float .tflite or an .onnx
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
    /// Input layout of an ONNX export (a .tflite is always NHWC)
    #[arg(long, value_enum, default_value = "nchw")]
    layout: InputLayout,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    if crate::same_file(&args.model, &args.output) {
        bail!(
            "{}: -o names the input model; write the export to another path",
            args.output.display()
        );
    }
    let options = ImportOptions {
        resolution: None,
        labels: args.labels.as_deref().map(read_labels).transpose()?,
        ..Default::default()
    };
    let (file, _) = import(&args.model, &options)?;
    let r = file.config.resolution();
    let (bytes, input) = match (args.format, args.layout) {
        (Format::Tflite, _) => (write(&float_graph(&file)?), format!("[1, {r}, {r}, 3]")),
        (Format::Onnx, InputLayout::Nchw) => (
            export_onnx(&file, Layout::Nchw)?,
            format!("[1, 3, {r}, {r}]"),
        ),
        (Format::Onnx, InputLayout::Nhwc) => (
            export_onnx(&file, Layout::Nhwc)?,
            format!("[1, {r}, {r}, 3]"),
        ),
    };
    write_atomic(&args.output, &bytes)?;
    eprintln!(
        "wrote {} ({} bytes): {}, input {input} f32 ({}), output {}",
        args.output.display(),
        bytes.len(),
        file.config,
        file.preprocessing,
        match file.config.classes() {
            Some(c) => format!("[1, {c}] logits"),
            None => "pooled features".to_string(),
        }
    );
    Ok(())
}
