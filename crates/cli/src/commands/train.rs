//! `mobilenet train`: train or fine-tune on an image data set; with no arguments, the built-in
//! demo (Fashion-MNIST), which then classifies held-out images with the trained model.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{ArgMatches, Args, ValueEnum};
use mobilenet::data::{Augment, Dataset, Holdout};
use mobilenet::train::optim::{OptimizerKind, RmsPropVariant, Schedule};
use mobilenet::train::recipe;
use mobilenet::train::run::DataRecord;
use mobilenet::train::trainer::{
    epochs_since_best, Distillation, RunEnd, TrainOptions, Trainer, MODEL_BEST,
};
use mobilenet::weights::{ModelFile, WeightInit};
use mobilenet::{Classifier, InferenceModel, MobileNetConfig, Padding, Preset, Stem};

use super::train_data::{data_source, datasets, resume_source};
mod ranks;
mod setup;

use super::train_progress::{profile_table, Bars};
use setup::{model_for, options};

/// Where the full Fashion-MNIST set lives when Debian's `dataset-fashion-mnist` is installed.
pub(super) const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// RMSprop as in the paper (TensorFlow form: ε inside the root, lr folded into momentum)
    RmspropTf,
    /// RMSprop as in PyTorch
    RmspropTorch,
    /// SGD with momentum
    Sgd,
    /// Adam (Keras's and PyTorch's form; weight decay as L2 in the gradient)
    Adam,
    /// AdamW (weight decay decoupled from the gradient)
    Adamw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitArg {
    He,
    Torch,
}

impl From<InitArg> for WeightInit {
    fn from(a: InitArg) -> WeightInit {
        match a {
            InitArg::He => WeightInit::He,
            InitArg::Torch => WeightInit::Torch,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    /// ×decay-rate every decay-epochs (TF-slim: 0.94 every 2.5)
    Exponential,
    /// linear warm-up then cosine to 0
    Cosine,
}

/// How batch norm behaves in training steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BnArg {
    /// Batch statistics; the moving averages are updated
    Train,
    /// The moving statistics normalise and are not updated
    Frozen,
}

/// What `--freeze` holds fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FreezeArg {
    /// Every layer but the classifier.
    Backbone,
    /// Nothing (the default).
    None,
    /// The layers from the input through this layer or block (checked against the network).
    Through(String),
}

fn freeze_arg(s: &str) -> Result<FreezeArg, String> {
    Ok(match s {
        "backbone" => FreezeArg::Backbone,
        "none" => FreezeArg::None,
        layer if layer.starts_with("conv_") => FreezeArg::Through(layer.to_string()),
        other => {
            return Err(format!(
                "{other:?} is not backbone, none or a layer name such as conv_7"
            ))
        }
    })
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training data: an image folder (one sub-folder per class; a folder with train/ and test/
    /// inside uses them), a folder of CIFAR-10 .bin batches, or Fashion-MNIST IDX files.
    /// Default: Fashion-MNIST (the full 60k set if installed in /usr/share/datasets, else the
    /// built-in 10k test set split into train and held-out parts)
    #[arg(long)]
    pub(super) data: Option<PathBuf>,
    /// Held-out data (default: test/ or val/ beside train/, else --holdout images of --data)
    #[arg(long)]
    pub(super) val: Option<PathBuf>,
    /// Held out of --data for validation when there is no separate held-out set: a count of
    /// images drawn at random, or a percentage of every class (stratified)
    #[arg(long, default_value = "10%")]
    pub(super) holdout: Holdout,
    /// Leave out images that cannot be read or decoded (each named once, counted per epoch)
    /// instead of stopping at the first one
    #[arg(long)]
    pub(super) skip_bad_images: bool,
    /// Named α × resolution, e.g. 0.5_32
    #[arg(long, conflicts_with_all = ["alpha", "resolution"])]
    preset: Option<Preset>,
    /// Width multiplier α
    #[arg(long)]
    alpha: Option<f64>,
    /// Input resolution (default: 32 for images up to 32 pixels, else 224)
    #[arg(long)]
    resolution: Option<usize>,
    /// Stem stride: standard (2) or small-input (1); default small-input at resolution ≤ 64
    #[arg(long)]
    stem: Option<Stem>,
    /// Padding of the 3×3 convolutions: tf-same (Google's checkpoints; the default) or
    /// symmetric (PyTorch's)
    #[arg(long)]
    padding: Option<Padding>,
    /// Passes over the training data
    #[arg(long)]
    pub(super) epochs: Option<usize>,
    /// Images per step
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Base learning rate (default per optimiser: 0.1 RMSprop-TF, 0.05 SGD, 0.001 others)
    #[arg(long)]
    lr: Option<f32>,
    /// Base learning rate of the classifier, if it should differ from --lr (same schedule)
    #[arg(long, value_name = "LR")]
    head_lr: Option<f32>,
    #[arg(long, value_enum, default_value_t = OptimizerArg::RmspropTf)]
    optimizer: OptimizerArg,
    /// Momentum (RMSprop and SGD)
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// RMSprop decay of the mean square
    #[arg(long, default_value_t = 0.9)]
    rms_decay: f32,
    /// RMSprop ε (the paper: 1.0)
    #[arg(long, default_value_t = 1.0)]
    rms_epsilon: f32,
    /// Adam β₁, the first moment's decay
    #[arg(long, default_value_t = 0.9)]
    adam_beta1: f32,
    /// Adam β₂, the second moment's decay
    #[arg(long, default_value_t = 0.999)]
    adam_beta2: f32,
    /// Adam ε (Keras's default)
    #[arg(long, default_value_t = 1e-7)]
    adam_epsilon: f32,
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    schedule: ScheduleArg,
    /// Exponential schedule: factor per period
    #[arg(long, default_value_t = 0.94)]
    decay_rate: f32,
    /// Exponential schedule: period in epochs
    #[arg(long, default_value_t = 2.5)]
    decay_epochs: f32,
    /// Cosine schedule: warm-up epochs
    #[arg(long, default_value_t = 1.0)]
    warmup_epochs: f32,
    /// L2 weight decay on conv, pointwise and FC weights (never depthwise filters)
    #[arg(long, default_value_t = 4e-5)]
    weight_decay: f32,
    /// Label smoothing (off in the paper)
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Batch-norm moving-average decay (default: 1 − 1/steps per epoch, between 0.9 and 0.99)
    #[arg(long)]
    bn_decay: Option<f32>,
    /// Dropout rate before the classifier
    #[arg(long, default_value_t = 0.001)]
    dropout: f64,
    /// No augmentation (default: pad-crop-flip for small images, crop-flip for large)
    #[arg(long)]
    no_augment: bool,
    /// Small images: zero padding of the random crop, in pixels (default resolution/8)
    #[arg(long)]
    pad: Option<u32>,
    /// Starting weights of a run from scratch (and of a replaced classifier): torch (PyTorch's
    /// module defaults, U(±1/√fan_in), FC bias too) or he (U(±√(6/fan_in)), zero FC bias)
    #[arg(long, value_enum, default_value_t = InitArg::Torch)]
    weight_init: InitArg,
    /// What stays fixed: backbone (train only the classifier, a linear probe of --init's
    /// features: the backbone runs in the inference engine with its moving batch-norm
    /// statistics and no backward pass), none, or a layer such as conv_7 (the layers from the
    /// input through block 7 stay fixed, with moving statistics; after --freeze-epochs if given)
    #[arg(long, value_name = "backbone|none|LAYER", value_parser = freeze_arg)]
    freeze: Option<FreezeArg>,
    /// Two-stage fine-tuning: the first N epochs train only the classifier (as --freeze
    /// backbone), the rest the whole network at the learning rate × --unfreeze-lr-scale, with
    /// a fresh optimiser state (as Keras recompiles)
    #[arg(long, value_name = "N")]
    freeze_epochs: Option<usize>,
    /// Factor on the learning rate once the backbone is unfrozen
    #[arg(long, default_value_t = 0.1)]
    unfreeze_lr_scale: f32,
    /// Distil from this model (any model file or quantized .tflite with the same classes): the
    /// loss mixes its soft targets with the labels (Hinton et al. 2015)
    #[arg(long, value_name = "MODEL")]
    teacher: Option<PathBuf>,
    /// Weight of the teacher's term in the loss (the labels get 1 − w)
    #[arg(long, default_value_t = 0.5, requires = "teacher")]
    distill_weight: f32,
    /// Temperature of the teacher's and the student's softmax in the teacher's term
    #[arg(long, default_value_t = 4.0, requires = "teacher")]
    temperature: f32,
    /// Batch norm in training steps: train (batch statistics, moving averages updated) or
    /// frozen (the moving statistics normalise and stay; Keras's advice for fine-tuning)
    #[arg(long, value_enum, default_value_t = BnArg::Train)]
    bn: BnArg,
    /// Stop when the held-out accuracy has not improved for N epochs (the best model is kept)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    patience: Option<u64>,
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// Compute threads (default: all cores)
    #[arg(long, default_value_t = 0, value_parser = crate::threads_arg)]
    pub(super) threads: usize,
    /// Threads decoding and augmenting images
    #[arg(long, default_value_t = 2)]
    pub(super) workers: usize,
    /// Run directory for checkpoints, metrics and plots
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its checkpoint (same data)
    #[arg(long, conflicts_with_all = ["init", "out"])]
    resume: Option<PathBuf>,
    /// Start from these weights (a model file); the classifier is replaced when the class count
    /// differs
    #[arg(long)]
    init: Option<PathBuf>,
    /// Held-out images to classify and print at the end
    #[arg(long, default_value_t = 8)]
    show: usize,
    /// Time every operation of the training steps and print where the time went
    #[arg(long)]
    profile: bool,
    /// The 1×1 convolutions' GEMMs (forward, weight and input gradients) in f32, or in bf16
    /// with f32 sums (needs AVX512-BF16); weights, their updates, batch norm and the other
    /// layers stay f32
    #[arg(long, value_enum, default_value_t = crate::PrecisionArg::F32)]
    precision: crate::PrecisionArg,
    /// Under mpirun: batch norm with each rank's own batch statistics instead of the global
    /// batch's (synchronised batch norm, the default)
    #[arg(long)]
    per_rank_bn: bool,
    /// Under mpirun: seconds a rank waits for the others in one collective before it ends the
    /// job (a rank died or is stuck)
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    mpi_timeout: f64,
    /// Under mpirun: gradients are summed across ranks in buckets of this many MB, each sent
    /// while the backward pass goes on below its layers; 0: in one allreduce after the pass
    #[arg(long, default_value_t = mobilenet::train::dist::BUCKET_BYTES as f64 / 1e6, value_name = "MB")]
    allreduce_bucket_mb: f64,
}

pub fn run(args: &TrainArgs, matches: Option<&ArgMatches>) -> Result<()> {
    if args.freeze == Some(FreezeArg::Backbone) && args.freeze_epochs.is_some() {
        anyhow::bail!(
            "--freeze backbone holds the backbone in every epoch, --freeze-epochs N in the first \
             N: give one (--freeze conv_K with --freeze-epochs N unfreezes the layers after conv_K)"
        );
    }
    if !(args.allreduce_bucket_mb.is_finite() && args.allreduce_bucket_mb >= 0.0) {
        anyhow::bail!(
            "--allreduce-bucket-mb {} is out of range: it must be 0 or more megabytes",
            args.allreduce_bucket_mb
        );
    }
    if !(args.mpi_timeout.is_finite() && args.mpi_timeout > 0.0) {
        anyhow::bail!(
            "--mpi-timeout {} is out of range: it must be a positive number of seconds",
            args.mpi_timeout
        );
    }
    let group = ranks::join(args)?;
    let rank = group.as_ref().map_or(0, |g| g.collective.rank());
    if rank != 0 {
        ranks::quiet_stdout();
    }
    if let Some(g) = &group {
        println!(
            "{} ranks over MPI, {} batch norm",
            g.collective.size(),
            if g.sync_bn {
                "synchronised"
            } else {
                "per-rank"
            }
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // A second Ctrl-C while the checkpoint is written kills the process as usual.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::Relaxed) {
                std::process::exit(130);
            }
            // Every rank gets the signal; rank 0 speaks for the run.
            if rank == 0 {
                eprintln!(
                    "\ninterrupted: saving a checkpoint at the current step (Ctrl-C again to quit now)"
                );
            }
        });
    }
    let resumed = match &args.resume {
        Some(dir) => {
            let mut t = Trainer::resume_in(dir, group.clone())?;
            let source = resume_source(args, matches, dir, &mut t)?;
            Some((t, source))
        }
        None => None,
    };
    let source = match &resumed {
        Some((_, source)) => source.clone(),
        None => data_source(args),
    };
    let (train, val, described) = datasets(&source)?;
    println!("data: {described}");
    let (train_print, val_print) = (train.fingerprint(), val.fingerprint());
    let mut trainer = match resumed {
        Some((t, _)) => {
            if let Some(record) = &t.state.data {
                record
                    .check(&train_print, &val_print)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", t.dir().display()))?;
            }
            println!(
                "resuming {} at epoch {}, batch {}",
                t.dir().display(),
                t.state.epoch + 1,
                t.state.batch
            );
            t
        }
        None => {
            let (width, height) = first_image_size(&train)?;
            let small = recipe::is_small(width, height);
            let model = model_for(args, &train, small)?;
            let opts = options(args, small, model.config.resolution(), train.len());
            let dir = args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("runs/{}", timestamp())));
            println!("model: {}", model.config);
            println!(
                "training: {} of {} images, batch {}, {}, lr {} ({}), weight decay {}, batch-norm decay {}, augmentation: {}",
                plural(opts.epochs, "epoch"), train.len(), opts.batch_size, opts.optimizer, opts.lr, opts.schedule, opts.weight_decay, opts.bn_decay, opts.augment
            );
            if let Some(lr) = opts.head_lr {
                println!("classifier: learning rate {lr} (same schedule)");
            }
            if let Some(d) = &opts.distill {
                println!(
                    "distilling from {}: weight {} on its soft targets at temperature {}",
                    d.teacher.display(),
                    d.weight,
                    d.temperature
                );
            }
            match opts.freeze_epochs {
                0 => {}
                n if n >= opts.epochs => println!(
                    "backbone frozen: only the classifier trains (moving batch-norm statistics)"
                ),
                n => println!(
                    "backbone frozen for the first {}, then {} at the learning rate × {} (fresh \
                     optimiser state)",
                    plural(n, "epoch"),
                    match &opts.freeze_through {
                        Some(layer) => format!("the layers after {layer}"),
                        None => "the whole network".to_string(),
                    },
                    opts.unfreeze_lr_scale
                ),
            }
            if let (Some(layer), 0) = (&opts.freeze_through, opts.freeze_epochs) {
                println!(
                    "layers from the input through {layer} fixed (moving batch-norm statistics)"
                );
            }
            println!("run directory: {}", dir.display());
            let mut t = Trainer::new_in(&model, opts, &dir, group.clone())?;
            t.state.data = Some(DataRecord {
                source,
                train: train_print,
                held_out: val_print,
            });
            t
        }
    };
    if let Some(g) = trainer.net.group() {
        let (grads, bn, calls) = trainer.net.allreduce_per_step();
        println!(
            "allreduce per step and rank: {:.2} MB of gradients {}{}",
            grads as f64 / 1e6,
            match g.bucket_bytes {
                0 => "in one allreduce after the backward pass".to_string(),
                b => format!(
                    "in buckets of {:.2} MB during the backward pass",
                    b as f64 / 1e6
                ),
            },
            match calls {
                0 => String::new(),
                n => format!(
                    ", {:.2} MB of batch-norm sums in {n} more allreduces",
                    bn as f64 / 1e6
                ),
            }
        );
    }
    let dir = trainer.dir().to_path_buf();
    let ranks = match trainer.net.group() {
        Some(g) => format!(", {} ranks", g.collective.size()),
        None => String::new(),
    };
    // A new run's and a resumed one's (the checkpoint keeps it).
    let precision = match trainer.net.precision() {
        mobilenet::Precision::F32 => "",
        mobilenet::Precision::Bf16 => {
            println!(
                "precision: bf16 pointwise GEMMs (forward, weight and input gradients), f32 \
                 weights, batch norm and sums"
            );
            ", bf16"
        }
    };
    let title = format!(
        "MobileNet v1 {} on {}{ranks}{precision}",
        trainer.net.config().preset(),
        described
    );
    let mut silent = ranks::Silent(stop.clone());
    let mut bars = Bars::new(stop, dir.clone(), title, train.classes().len());
    trainer.net.set_profiling(args.profile);
    let end = match rank {
        0 => trainer.run(&train, &val, &mut bars)?,
        _ => trainer.run(&train, &val, &mut silent)?,
    };
    if let Some(bar) = bars.bar.take() {
        bar.finish_and_clear();
    }
    if let Some(profile) = trainer.net.profile() {
        print!("{}", profile_table(profile));
    }
    if end == RunEnd::Interrupted {
        if rank == 0 {
            trainer.save_checkpoint()?;
            eprintln!(
                "checkpoint saved; continue with: mobilenet train --resume {}",
                dir.display()
            );
        }
        // Release the run directory's lock and end MPI (exit() skips destructors).
        drop(trainer);
        drop(group);
        std::process::exit(130);
    }
    if end == RunEnd::EarlyStopped {
        let history = &trainer.state.history;
        let since = epochs_since_best(history);
        println!(
            "stopped early after epoch {}: the held-out accuracy has not improved for {} \
             (best at epoch {})",
            history.len(),
            plural(since, "epoch"),
            history.len() - since
        );
    }
    let best = dir.join(MODEL_BEST);
    let history = &trainer.state.history;
    println!(
        "done: best held-out accuracy {:.2}% (epoch {}) → {}; curves in {}",
        100.0 * trainer.state.best_val_accuracy,
        history.len() - epochs_since_best(history),
        best.display(),
        dir.join("curves.png").display()
    );
    match rank {
        0 => show_predictions(&best, &val, args.show),
        _ => Ok(()),
    }
}

/// `1 epoch`, `3 epochs`.
pub(super) fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The size of the first training image that decodes (the first one, unless bad images are
/// skipped), which tells whether the data's images are small.
fn first_image_size(train: &Dataset) -> Result<(u32, u32)> {
    let mut first_error = None;
    for i in 0..train.len() {
        match train.image(i) {
            Ok(img) => return Ok(img.dimensions()),
            Err(e) if train.skips_bad_images() => {
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e).context("reading the first training image"),
        }
    }
    match first_error {
        Some(e) => Err(e).context("no training image decodes"),
        None => anyhow::bail!("no training images"),
    }
}

/// Classifies a few held-out images with the best model and prints them.
fn show_predictions(model_path: &Path, val: &Dataset, n: usize) -> Result<()> {
    if n == 0 || val.is_empty() {
        return Ok(());
    }
    let file = ModelFile::load(model_path)?;
    let model = InferenceModel::new(&file)?;
    let mut runner = model.runner(1, 0);
    let mut probs = vec![0.0; model.output_len()];
    println!("held-out images classified with {}:", model_path.display());
    let step = (val.len() / n).max(1);
    for i in (0..val.len()).step_by(step).take(n) {
        let img = match val.image(i) {
            Ok(img) => img,
            // Already named during training.
            Err(_) if val.skips_bad_images() => continue,
            Err(e) => return Err(e.into()),
        };
        runner.load(&model.pixels(&img));
        runner.run();
        runner.probabilities(&mut probs);
        let top = &mobilenet::classify::top_k(&probs, 1, Classifier::labels(&model))[0];
        let truth = &val.classes()[val.label(i)];
        let mark = if top.class == val.label(i) {
            "✓"
        } else {
            "✗"
        };
        println!(
            "  {mark} true {truth:<12} predicted {:<12} ({:>5.1}%)  {}",
            top.label,
            100.0 * top.probability,
            val.describe(i)
        );
    }
    Ok(())
}

fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("run-{secs}")
}
