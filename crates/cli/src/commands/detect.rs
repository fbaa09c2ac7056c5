//! `mobilenet detect`: objects in images with an SSD detector file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use mobilenet::detect::{AnyDetector, Detection, Frame, NmsConfig};
use mobilenet::preprocess::load_image;
use serde::Serialize;

use crate::draw::draw_detections;

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Detector file (from `mobilenet import` of face-api's manifest, or `train-detect`), or
    /// an int8 .tflite detector from `mobilenet quantize`
    #[arg(long)]
    model: PathBuf,
    /// Images (JPEG, PNG, BMP, WebP), or folders of them (searched recursively)
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Smallest score reported (default: the detector's, 0.5)
    #[arg(long)]
    min_score: Option<f32>,
    /// IoU above which a box is suppressed by a better one of its class (default: the
    /// detector's)
    #[arg(long)]
    iou: Option<f32>,
    /// Most detections per image (default: the detector's, 100)
    #[arg(long)]
    max_detections: Option<usize>,
    /// One JSON object per image per line: {"image", "detections": [{"class", "label",
    /// "score", "box": [x, y, width, height]}]}, boxes in the image's pixels
    #[arg(long)]
    json: bool,
    /// Also write each image with its boxes and labels as DIR/<name>.png
    #[arg(long, value_name = "DIR")]
    draw: Option<PathBuf>,
    /// Worker threads (default: all cores)
    #[arg(long, default_value_t = 0, value_parser = crate::threads_arg)]
    threads: usize,
    /// For a float detector: f32, or bf16 GEMMs (needs AVX512-BF16)
    #[arg(long, value_enum, default_value_t = crate::PrecisionArg::F32)]
    precision: crate::PrecisionArg,
}

#[derive(Serialize)]
struct DetectionJson<'a> {
    class: usize,
    label: &'a str,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f64; 4],
}

#[derive(Serialize)]
struct ImageJson<'a> {
    image: String,
    detections: Vec<DetectionJson<'a>>,
}

/// The detector's NMS settings with the command line's overrides, checked.
fn nms_config(args: &DetectArgs, defaults: NmsConfig) -> Result<NmsConfig> {
    let config = NmsConfig {
        min_score: args.min_score.unwrap_or(defaults.min_score),
        iou: args.iou.unwrap_or(defaults.iou),
        max_detections: args.max_detections.unwrap_or(defaults.max_detections),
    };
    config
        .check(["--min-score", "--iou", "--max-detections"])
        .map_err(anyhow::Error::msg)?;
    Ok(config)
}

/// Loads a detector: a detector file, or an int8 `.tflite` from `mobilenet quantize`; a float
/// one with its GEMMs at `precision`.
pub(crate) fn load_detector(path: &Path, precision: crate::PrecisionArg) -> Result<AnyDetector> {
    let mut detector = AnyDetector::load(path)?;
    detector.set_precision(precision.into(), path)?;
    Ok(detector)
}

pub fn run(args: &DetectArgs) -> Result<()> {
    let detector = load_detector(&args.model, args.precision)?;
    let nms = nms_config(args, detector.config().nms)?;
    let images = super::classify::expand(&args.images)?;
    if let Some(dir) = &args.draw {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    let labels = detector.config().labels.clone();
    let mut session = detector.session(args.threads);
    let mut failed = 0;
    for path in &images {
        let img = match load_image(path) {
            Ok(img) => img,
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
                continue;
            }
        };
        let (found, frame) = session.detect(&img, Some(&nms));
        let label = |d: &Detection| label_of(&labels, d);
        if args.json {
            let detections = found
                .iter()
                .map(|d| DetectionJson {
                    class: d.class,
                    label: label(d),
                    score: (d.score * 1e4).round() / 1e4,
                    bbox: frame.to_pixels(d.bbox).map(|v| (v * 10.0).round() / 10.0),
                })
                .collect();
            let line = ImageJson {
                image: path.display().to_string(),
                detections,
            };
            println!("{}", serde_json::to_string(&line)?);
        } else {
            print_text(path, &found, &frame, &labels);
        }
        if let Some(dir) = &args.draw {
            let stem = path
                .file_stem()
                .map_or("image".into(), |s| s.to_string_lossy());
            let out = dir.join(format!("{stem}.png"));
            let boxes: Vec<(String, f32, [f64; 4])> = found
                .iter()
                .map(|d| (label(d).to_string(), d.score, frame.to_pixels(d.bbox)))
                .collect();
            draw_detections(&img, &boxes, &out)?;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images could not be read", images.len());
    }
    Ok(())
}

/// The label of a detection's class.
fn label_of<'a>(labels: &'a [String], d: &Detection) -> &'a str {
    labels.get(d.class - 1).map_or("?", |s| s.as_str())
}

fn print_text(path: &Path, found: &[Detection], frame: &Frame, labels: &[String]) {
    let noun = if found.len() == 1 {
        "object"
    } else {
        "objects"
    };
    println!(
        "{} ({}×{}): {} {noun}",
        path.display(),
        frame.width,
        frame.height,
        found.len()
    );
    for d in found {
        let [x, y, w, h] = frame.to_pixels(d.bbox);
        println!(
            "  {:<12} {:.3}  x {x:.1}  y {y:.1}  width {w:.1}  height {h:.1}",
            label_of(labels, d),
            d.score
        );
    }
}
