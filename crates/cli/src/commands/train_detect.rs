//! `mobilenet train-detect`: train an SSD detector on COCO-annotated images, from an ImageNet
//! backbone or a detector file, with checkpoints, resume, metrics and curves.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mobilenet::detect::{DetectorConfig, DetectorFile};
use mobilenet::import::{import, ImportOptions};
use mobilenet::train::optim::{OptimizerKind, RmsPropVariant, Schedule};
use mobilenet::train::ssd::{DetectionData, SsdRun, SsdTrainOptions};

#[derive(Debug, Args)]
pub struct TrainDetectArgs {
    /// Folder of the training images
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// COCO instances JSON of the training images, or a folder of Pascal VOC XML files
    #[arg(long, required_unless_present = "resume")]
    annotations: Option<PathBuf>,
    /// Starting weights: an ImageNet classifier (model file or TF-slim/Keras weights) whose body
    /// becomes the backbone, or a detector file to fine-tune
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Continue the run in this directory from its checkpoint (--data and --annotations again)
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Run directory: checkpoint, detector, metrics.jsonl, curves.png
    #[arg(long, default_value = "runs/detect")]
    out: PathBuf,
    /// Evaluate COCO mAP on these annotations, COCO JSON or VOC folder (default: the training set)
    #[arg(long, requires = "val_data")]
    val_annotations: Option<PathBuf>,
    /// Folder of the evaluation images
    #[arg(long, requires = "val_annotations")]
    val_data: Option<PathBuf>,
    /// Input side of a new detector (SSD300: 300)
    #[arg(long, default_value_t = 300)]
    input: usize,
    /// Passes over the data (default 20; with --resume, a new total to train to)
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per step
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Base learning rate (warm-up then cosine decay; the Object Detection API's SSD: 0.004)
    #[arg(long, default_value_t = 0.004)]
    lr: f32,
    /// L2 weight decay (the Object Detection API's SSD: 4e-5)
    #[arg(long, default_value_t = 4e-5)]
    weight_decay: f32,
    /// rmsprop (the Object Detection API's SSD recipe), sgd or adam
    #[arg(long, default_value = "rmsprop")]
    optimizer: String,
    /// Evaluate every N epochs (and after the last)
    #[arg(long, default_value_t = 1)]
    eval_every: usize,
    /// Train on the images as they are (no photometric changes, crops or flips)
    #[arg(long)]
    no_augment: bool,
    /// Seed of initialisation, shuffling and augmentation
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute threads (default: all cores)
    #[arg(long, default_value_t = 0, value_parser = crate::threads_arg)]
    threads: usize,
}

fn optimizer(name: &str) -> Result<OptimizerKind> {
    Ok(match name {
        "rmsprop" => OptimizerKind::RmsProp {
            variant: RmsPropVariant::Tf,
            decay: 0.9,
            momentum: 0.9,
            epsilon: 1.0,
        },
        "sgd" => OptimizerKind::Sgd { momentum: 0.9 },
        "adam" => OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            decoupled: false,
        },
        other => bail!("unknown optimizer {other:?} (expected rmsprop, sgd or adam)"),
    })
}

pub fn run(args: &TrainDetectArgs) -> Result<()> {
    let (Some(data_dir), Some(ann_path)) = (&args.data, &args.annotations) else {
        bail!("--data and --annotations name the training images (also when resuming)");
    };
    let annotations = mobilenet::detect::load_annotations(ann_path)?;
    let mut data = DetectionData::from_coco(&annotations, data_dir);
    if data.samples.is_empty() {
        bail!("{}: no images", ann_path.display());
    }
    let mut run = match (&args.resume, &args.init) {
        (Some(dir), _) => {
            let mut run = SsdRun::resume(dir, args.threads)?;
            if let Some(epochs) = args.epochs {
                run.options.epochs = epochs;
            }
            run
        }
        (None, Some(init)) => {
            let epochs = args.epochs.unwrap_or(20);
            if !(args.batch_size >= 1 && args.lr > 0.0 && args.lr.is_finite() && epochs >= 1) {
                bail!("--batch-size and --epochs must be at least 1 and --lr positive");
            }
            let file = if mobilenet::detect::is_detector_file(init) {
                DetectorFile::load(init)?
            } else {
                let (model, _) = import(init, &ImportOptions::default())
                    .with_context(|| format!("{}: reading the backbone", init.display()))?;
                let labels = data.labels.clone();
                let mut config = DetectorConfig::ssd300(labels.len() + 1, labels);
                config.input = args.input;
                config.alpha = model.config.alpha();
                config.name = format!("ssd{}", args.input);
                DetectorFile::from_backbone(config, &model, args.seed)?
            };
            if file.config.labels != data.labels {
                bail!(
                    "{}: the detector's classes {:?} are not the annotations' categories {:?}",
                    init.display(),
                    file.config.labels.iter().take(5).collect::<Vec<_>>(),
                    data.labels.iter().take(5).collect::<Vec<_>>()
                );
            }
            let options = SsdTrainOptions {
                epochs,
                batch_size: args.batch_size,
                lr: args.lr,
                schedule: Schedule::Cosine {
                    warmup_epochs: (epochs as f32 / 10.0).min(2.0),
                },
                optimizer: optimizer(&args.optimizer)?,
                weight_decay: args.weight_decay,
                bn_decay: 0.97,
                augment: !args.no_augment,
                seed: args.seed,
                eval_every: args.eval_every,
            };
            SsdRun::new(&args.out, &file, options, args.threads)?
        }
        (None, None) => bail!("give --init (starting weights) or --resume (a run directory)"),
    };
    let out = args.resume.clone().unwrap_or_else(|| args.out.clone());
    let eval_set = match (&args.val_annotations, &args.val_data) {
        (Some(a), Some(d)) => Some((mobilenet::detect::load_annotations(a)?, d.clone())),
        _ => None,
    };
    let eval = match &eval_set {
        Some((a, d)) => Some((a, d.as_path())),
        None => Some((&annotations, data_dir.as_path())),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::Relaxed) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: stopping after this step; the last epoch's checkpoint stays (Ctrl-C again to quit now)");
        });
    }
    let c = run.net.config().clone();
    println!(
        "train-detect: {} ({}×{}, α {}), {} images, {} classes, {} epochs of batch {}, → {}",
        c.name,
        c.input,
        c.input,
        mobilenet::format_alpha(c.alpha),
        data.samples.len(),
        c.labels.len(),
        run.options.epochs,
        run.options.batch_size,
        out.display()
    );
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "epoch {msg} {bar:25} {pos}/{len} steps  {elapsed} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let stop_flag = Arc::clone(&stop);
    run.run(
        &mut data,
        eval,
        &mut |s| {
            bar.set_length(s.step.1 as u64);
            bar.set_position(s.step.0 as u64);
            bar.set_message(format!(
                "{}  loss {:.3}",
                s.epoch,
                s.loss_boxes + s.loss_classes
            ));
        },
        &mut |e| {
            let line = format!(
                "epoch {:>3}  loss {:.4} (box {:.4}, class {:.4})  lr {:.2e}  {:.1} images/s{}",
                e.epoch,
                e.loss_boxes + e.loss_classes,
                e.loss_boxes,
                e.loss_classes,
                e.lr,
                e.images_per_s,
                match (e.map, e.ap50) {
                    (Some(m), Some(a)) => format!("  mAP {m:.4}  AP50 {a:.4}"),
                    _ => String::new(),
                }
            );
            bar.suspend(|| println!("{line}"));
        },
        &|| stop_flag.load(Ordering::Relaxed),
    )?;
    bar.finish_and_clear();
    crate::plot::detection_curves(&out.join("curves.png"), &run.history, &c.name)?;
    if stop.load(Ordering::Relaxed) {
        println!(
            "stopped: resume with `mobilenet train-detect --resume {} --data {} --annotations {}`",
            out.display(),
            data_dir.display(),
            ann_path.display()
        );
    } else {
        println!(
            "done: {} (detector), {} (curves); run it with `mobilenet detect --model {} IMAGE…`",
            out.join("detector.safetensors").display(),
            out.join("curves.png").display(),
            out.join("detector.safetensors").display()
        );
    }
    Ok(())
}
