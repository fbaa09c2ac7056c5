//! `mobilenet eval-detect`: COCO box mAP of a detector on an annotated image folder.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mobilenet::detect::{category_map, coco_evaluate, detect_dataset, CocoStats, NmsConfig};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct EvalDetectArgs {
    /// Detector file
    #[arg(long)]
    model: PathBuf,
    /// Folder of the images the annotations name
    #[arg(long)]
    data: PathBuf,
    /// COCO instances JSON, or a folder of Pascal VOC XML files
    #[arg(long)]
    annotations: PathBuf,
    /// Smallest score kept (COCO evaluation wants low-scoring detections too)
    #[arg(long, default_value_t = 0.01)]
    min_score: f32,
    /// Most detections per image (COCO counts at most 100)
    #[arg(long, default_value_t = 100)]
    max_detections: usize,
    /// Write the detections here in COCO's results format (for pycocotools or a leaderboard)
    #[arg(long, value_name = "PATH")]
    results: Option<PathBuf>,
    /// Compute threads (default: all cores)
    #[arg(long, default_value_t = 0, value_parser = crate::threads_arg)]
    threads: usize,
    /// For a float detector: f32, or bf16 GEMMs (needs AVX512-BF16)
    #[arg(long, value_enum, default_value_t = crate::PrecisionArg::F32)]
    precision: crate::PrecisionArg,
    /// One JSON object on stdout instead of the summary
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ReportJson {
    images: usize,
    detections: usize,
    #[serde(flatten)]
    stats: CocoStats,
}

/// `COCOeval.summarize()`'s lines, so that the numbers read as pycocotools prints them.
pub(crate) fn summary(stats: &CocoStats) -> String {
    let rows = [
        ("Average Precision", "AP", "0.50:0.95", "all", 100),
        ("Average Precision", "AP", "0.50     ", "all", 100),
        ("Average Precision", "AP", "0.75     ", "all", 100),
        ("Average Precision", "AP", "0.50:0.95", "small", 100),
        ("Average Precision", "AP", "0.50:0.95", "medium", 100),
        ("Average Precision", "AP", "0.50:0.95", "large", 100),
        ("Average Recall   ", "AR", "0.50:0.95", "all", 1),
        ("Average Recall   ", "AR", "0.50:0.95", "all", 10),
        ("Average Recall   ", "AR", "0.50:0.95", "all", 100),
        ("Average Recall   ", "AR", "0.50:0.95", "small", 100),
        ("Average Recall   ", "AR", "0.50:0.95", "medium", 100),
        ("Average Recall   ", "AR", "0.50:0.95", "large", 100),
    ];
    rows.iter()
        .zip(stats.to_array())
        .map(|((title, kind, iou, area, dets), v)| {
            format!(
                " {title} ({kind}) @[ IoU={iou} | area={area:>6} | maxDets={dets:>3} ] = {v:.3}\n"
            )
        })
        .collect()
}

pub fn run(args: &EvalDetectArgs) -> Result<()> {
    let detector = super::detect::load_detector(&args.model, args.precision)?;
    let nms = NmsConfig {
        min_score: args.min_score,
        max_detections: args.max_detections,
        ..detector.config().nms
    };
    nms.check(["--min-score", "--iou", "--max-detections"])
        .map_err(anyhow::Error::msg)?;
    let data = mobilenet::detect::load_annotations(&args.annotations)?;
    if data.images.is_empty() {
        bail!("{}: no images to evaluate", args.annotations.display());
    }
    let map = category_map(&detector.config().labels, &data.categories)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.model.display()))?;
    let mut session = detector.session(args.threads);
    let bar = ProgressBar::new(data.images.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images  {elapsed} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let results = detect_dataset(&mut *session, &data, &args.data, &nms, &map, &mut |n| {
        bar.set_position(n as u64)
    })?;
    bar.finish_and_clear();
    if let Some(path) = &args.results {
        let text = serde_json::to_string(&results)?;
        mobilenet::weights::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let stats = coco_evaluate(&data, &results)?;
    if args.json {
        let report = ReportJson {
            images: data.images.len(),
            detections: results.len(),
            stats,
        };
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} images, {} annotated objects, {} detections (score ≥ {})",
            data.images.len(),
            data.annotations.len(),
            results.len(),
            args.min_score
        );
        print!("{}", summary(&stats));
    }
    Ok(())
}
