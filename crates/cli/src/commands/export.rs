//! `mobilenet export`: a model as a file another runtime loads: float TFLite (TFLite and
//! LiteRT run it; `classify` and `import` read it back with its labels and preprocessing) or
//! ONNX (opset 13; ONNX Runtime runs it), both with batch norm folded and logits out; a
//! quantized `.tflite` goes to ONNX as int8 in QDQ form.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use mobilenet::import::{import, import_bytes, read_labels, ImportOptions};
use mobilenet::onnx::{export_onnx, export_qdq, Layout};
use mobilenet::tflite::{float_graph, is_tflite, read, write, ElementType, Graph};
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
    /// Numbers of the export: f32, or int8 (ONNX in QDQ form, from a quantized .tflite).
    /// Default: the model's own (int8 for a quantized .tflite, f32 otherwise)
    #[arg(long, value_enum)]
    precision: Option<Precision>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// Float weights and activations (a quantized model's weights dequantized)
    F32,
    /// Integer weights and activations (uint8 or int8, as the .tflite has them)
    Int8,
}

/// A `.tflite` file read (its bytes and graph), or `None` for a model of another format.
fn read_tflite(path: &std::path::Path) -> Result<Option<(Vec<u8>, Graph)>> {
    let mut head = [0u8; 8];
    let is_tflite = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| is_tflite(&head));
    if !is_tflite {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let graph =
        read(&bytes, path).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.reason))?;
    Ok(Some((bytes, graph)))
}

/// Whether a graph takes integer input (a quantized model).
fn is_quantized(graph: &Graph) -> bool {
    let input = graph.inputs.first().map(|&i| graph.tensors[i].kind);
    matches!(input, Some(ElementType::U8 | ElementType::I8))
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
    let tflite = read_tflite(&args.model)?;
    let graph = tflite.as_ref().map(|(_, g)| g).filter(|g| is_quantized(g));
    let precision = args.precision.unwrap_or(match (graph, args.format) {
        (Some(_), Format::Onnx) => Precision::Int8,
        _ => Precision::F32,
    });
    if precision == Precision::Int8 {
        return export_int8(args, graph, options.labels.as_deref());
    }
    // A .tflite already read is not read again.
    let (file, _) = match &tflite {
        Some((bytes, _)) => import_bytes(bytes, &args.model, &options)?,
        None => import(&args.model, &options)?,
    };
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

/// A quantized `.tflite` as int8 ONNX (QDQ).
fn export_int8(args: &ExportArgs, graph: Option<&Graph>, labels: Option<&[String]>) -> Result<()> {
    let Some(graph) = graph else {
        bail!(
            "{} is a float model: quantize it first (mobilenet quantize --model {} --calibration DIR -o q.tflite), then export q.tflite",
            args.model.display(),
            args.model.display()
        );
    };
    if args.format == Format::Tflite {
        bail!(
            "{} is already a quantized .tflite; --precision f32 writes a float one with its weights dequantized",
            args.model.display()
        );
    }
    let layout = match args.layout {
        InputLayout::Nchw => Layout::Nchw,
        InputLayout::Nhwc => Layout::Nhwc,
    };
    let bytes = export_qdq(graph, &args.model, layout, labels)?;
    write_atomic(&args.output, &bytes)?;
    let kind = graph.inputs.first().map(|&i| graph.tensors[i].kind);
    eprintln!(
        "wrote {} ({} bytes): {} as int8 ONNX in QDQ form ({} activations), input {} f32 normalised as the .tflite's input quantization expects, output logits",
        args.output.display(),
        bytes.len(),
        args.model.display(),
        if kind == Some(ElementType::I8) { "int8" } else { "uint8" },
        match layout {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    );
    Ok(())
}
