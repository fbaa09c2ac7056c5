//! `mobilenet eval`: top-1/top-5, per-class accuracy and the confusion matrix of a model on a
//! labelled data set.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use mobilenet::data::Dataset;
use mobilenet::eval::evaluate;

use crate::plot;
use crate::table::{Align, Table};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model file, or a quantized .tflite
    #[arg(long)]
    model: PathBuf,
    /// Labelled data: image folder, CIFAR-10 .bin folder or IDX files (see `train --help`)
    #[arg(long)]
    data: PathBuf,
    /// Images per forward pass
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Compute threads (default: all cores)
    #[arg(long, default_value_t = 0, value_parser = crate::threads_arg)]
    threads: usize,
    /// Leave out images that cannot be read or decoded (each named) instead of stopping
    #[arg(long)]
    skip_bad_images: bool,
    /// Where to draw the confusion matrix (PNG)
    #[arg(long)]
    confusion_png: Option<PathBuf>,
    /// Draw the confusion matrix's rows as fractions of their class instead of counts
    #[arg(long, requires = "confusion_png")]
    normalize: bool,
    /// One JSON object on stdout
    #[arg(long)]
    json: bool,
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

pub fn run(args: &EvalArgs) -> Result<()> {
    let data = Dataset::open(&args.data)?.skipping_bad_images(args.skip_bad_images);
    let warn_labels = |labels: Option<&[String]>| {
        if let Some(labels) = labels {
            if labels.len() >= data.classes().len()
                && labels[..data.classes().len()] != *data.classes()
            {
                eprintln!("warning: the model's labels differ from the data set's class folders; comparing by index");
            }
        }
    };
    let model =
        mobilenet::classifier::load_with(&args.model, args.requant.into(), args.precision.into())?;
    if model.classes().is_none() {
        bail!("{}: the model has no classifier head", args.model.display());
    }
    warn_labels(model.labels());
    let report = evaluate(model.as_ref(), &data, args.batch, args.threads, 2)?;
    for e in &report.skipped {
        eprintln!("warning: skipped {e}");
    }
    if let Some(png) = &args.confusion_png {
        let title = format!(
            "{} on {}: top-1 {:.2}%",
            args.model.display(),
            args.data.display(),
            100.0 * report.top1
        );
        plot::confusion_matrix(
            png,
            &report.classes,
            &report.confusion,
            &title,
            args.normalize,
        )?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let skipped = match report.skipped.len() {
        0 => String::new(),
        n => format!(" ({n} skipped)"),
    };
    let top5 = match report.classes.len() {
        0..=5 => String::new(),
        _ => format!(", top-5 {:.2}%", 100.0 * report.top5),
    };
    println!(
        "{} images{skipped}: top-1 {:.2}%{top5}, loss {:.4}",
        report.images,
        100.0 * report.top1,
        report.loss
    );
    let k = report.classes.len();
    let mut t = Table::new(&[
        ("class", Align::Left),
        ("images", Align::Right),
        ("accuracy", Align::Right),
    ]);
    for (c, name) in report.classes.iter().enumerate() {
        let n: usize = report.confusion[c].iter().sum();
        t.row([
            name.clone(),
            n.to_string(),
            if n == 0 {
                "no images".to_string()
            } else {
                format!("{:.1}%", 100.0 * report.per_class[c])
            },
        ]);
    }
    print!("{}", t.render());
    if k <= 20 {
        println!("\nconfusion matrix (rows: true class, columns: predicted):");
        let mut columns = vec![("".to_string(), Align::Left)];
        columns.extend((0..k).map(|c| (c.to_string(), Align::Right)));
        let cols: Vec<(&str, Align)> = columns.iter().map(|(s, a)| (s.as_str(), *a)).collect();
        let mut m = Table::new(&cols);
        for (c, row) in report.confusion.iter().enumerate() {
            let mut cells = vec![format!("{c} {}", report.classes[c])];
            cells.extend(row.iter().take(k).map(|n| n.to_string()));
            m.row(cells);
        }
        print!("{}", m.render());
    }
    if let Some(png) = &args.confusion_png {
        println!("confusion matrix drawn to {}", png.display());
    }
    Ok(())
}
