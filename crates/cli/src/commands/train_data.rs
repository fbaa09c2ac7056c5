//! Where `mobilenet train` gets its data, and what a resumed run keeps: the data source from
//! the arguments or the checkpoint, the held-out split, and the flags a resume refuses.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use mobilenet::data::Dataset;
use mobilenet::train::run::DataSource;
use mobilenet::train::trainer::{Trainer, MODEL_LAST};

use super::train::{TrainArgs, DEBIAN_FASHION_MNIST};

/// Where the arguments say the data is (paths made absolute, so that a resume from another
/// directory opens the same files).
pub(super) fn data_source(args: &TrainArgs) -> DataSource {
    let absolute = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    DataSource {
        data: args.data.as_ref().map(absolute),
        val: args.val.as_ref().map(absolute),
        holdout: args.holdout,
        split_seed: args.seed,
        skip_bad_images: args.skip_bad_images,
    }
}

/// The training and held-out sets of `source`, refusing a split that leaves either empty.
pub(super) fn datasets(source: &DataSource) -> Result<(Dataset, Dataset, String)> {
    let (train, val, described) = open_datasets(source)?;
    if train.is_empty() {
        bail!(
            "no training images: {described} (the data has {} images; --holdout {} takes them \
             all: give a smaller --holdout such as 10%, or --val DIR)",
            train.len() + val.len(),
            source.holdout
        );
    }
    if val.is_empty() {
        bail!("no held-out images to evaluate on: {described} (give --holdout N or --val DIR)");
    }
    if train.classes().len() < 2 {
        bail!(
            "{described}: one class ({:?}); a classifier needs at least two",
            train.classes()
        );
    }
    Ok((train, val, described))
}

fn open_datasets(source: &DataSource) -> Result<(Dataset, Dataset, String)> {
    let (train, val, described) = open_unskipped(source)?;
    let skip = source.skip_bad_images;
    Ok((
        train.skipping_bad_images(skip),
        val.skipping_bad_images(skip),
        described,
    ))
}

fn open_unskipped(source: &DataSource) -> Result<(Dataset, Dataset, String)> {
    let (holdout, seed) = (source.holdout, source.split_seed);
    if let Some(path) = &source.data {
        let (train_dir, val_dir) = (path.join("train"), ["test", "val"].map(|d| path.join(d)));
        if train_dir.is_dir() && source.val.is_none() {
            if let Some(val_dir) = val_dir.iter().find(|d| d.is_dir()) {
                let train = Dataset::open(&train_dir)?;
                let val = Dataset::open(val_dir)?;
                return Ok((
                    train,
                    val,
                    format!(
                        "{} (train/ and {}/)",
                        path.display(),
                        val_dir
                            .file_name()
                            .and_then(|n| n.to_str())
                            .unwrap_or("test")
                    ),
                ));
            }
        }
        let data = Dataset::open(path)?;
        return Ok(match &source.val {
            Some(v) => (data, Dataset::open(v)?, path.display().to_string()),
            None => {
                let (t, v) = data.split_by(holdout, seed);
                (t, v, format!("{} ({holdout} held out)", path.display()))
            }
        });
    }
    let debian = Path::new(DEBIAN_FASHION_MNIST);
    if debian.join("train-images-idx3-ubyte.gz").exists() {
        let train = Dataset::fashion_mnist(
            &debian.join("train-images-idx3-ubyte.gz"),
            &debian.join("train-labels-idx1-ubyte.gz"),
        )?;
        let val = Dataset::fashion_mnist(
            &debian.join("t10k-images-idx3-ubyte.gz"),
            &debian.join("t10k-labels-idx1-ubyte.gz"),
        )?;
        return Ok((
            train,
            val,
            format!("Fashion-MNIST 60k train / 10k test ({DEBIAN_FASHION_MNIST})"),
        ));
    }
    let (train, val) = Dataset::builtin_fashion_mnist().split_by(holdout, seed);
    let described = format!(
        "built-in Fashion-MNIST test set: {} to train, {} held out",
        train.len(),
        val.len()
    );
    Ok((train, val, described))
}

/// Flags that define a run: on `--resume` the checkpoint's values hold, and giving one of these
/// is an error (the data flags may repeat the run's own values).
const RUN_FLAGS: [&str; 32] = [
    "preset",
    "alpha",
    "resolution",
    "stem",
    "padding",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "rms_decay",
    "rms_epsilon",
    "schedule",
    "decay_rate",
    "decay_epochs",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "bn_decay",
    "dropout",
    "no_augment",
    "pad",
    "weight_init",
    "freeze",
    "freeze_epochs",
    "unfreeze_lr_scale",
    "patience",
    "bn",
    "teacher",
    "distill_weight",
    "temperature",
    "init",
    "out",
];

/// Whether `id` was given on the command line.
fn given(matches: Option<&ArgMatches>, id: &str) -> bool {
    matches.is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine))
}

/// The resumed run's data source; refuses flags that would change the run.
pub(super) fn resume_source(
    args: &TrainArgs,
    matches: Option<&ArgMatches>,
    dir: &Path,
    trainer: &mut Trainer,
) -> Result<DataSource> {
    if let Some(flag) = RUN_FLAGS.iter().find(|f| given(matches, f)) {
        bail!(
            "--{} cannot change when resuming {}: the checkpoint holds the run's settings \
             (to train with other settings, start a new run with --init {})",
            flag.replace('_', "-"),
            dir.display(),
            dir.join(MODEL_LAST).display()
        );
    }
    let asked = data_source(args);
    let Some(record) = &trainer.state.data else {
        eprintln!(
            "warning: {} was written before runs recorded their data: resuming on the data \
             the arguments name",
            dir.display()
        );
        return Ok(asked);
    };
    let recorded = &record.source;
    let differs = |flag: &str, then: String, now: String| -> Result<()> {
        if given(matches, flag) && then != now {
            bail!(
                "--{} {now} differs from the run's {then}: a resumed run trains on the data it \
                 started with (leave the flag out)",
                flag.replace('_', "-")
            );
        }
        Ok(())
    };
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or("the default data".into(), |p| p.display().to_string())
    };
    differs("data", path(&recorded.data), path(&asked.data))?;
    differs("val", path(&recorded.val), path(&asked.val))?;
    differs(
        "holdout",
        recorded.holdout.to_string(),
        asked.holdout.to_string(),
    )?;
    differs(
        "seed",
        recorded.split_seed.to_string(),
        asked.split_seed.to_string(),
    )?;
    if given(matches, "skip_bad_images") && !recorded.skip_bad_images {
        bail!(
            "--skip-bad-images: the run started without it, and a resumed run trains on the \
             images it started with (start a new run with --init {} to skip them)",
            dir.join(MODEL_LAST).display()
        );
    }
    if given(matches, "epochs") {
        let epochs = args.epochs.unwrap_or(0);
        let done = trainer.state.history.len();
        if epochs <= done {
            bail!("--epochs {epochs}: the run has already finished {done} epochs");
        }
        println!(
            "resuming with --epochs {epochs} instead of the run's {} (the learning-rate \
             schedule stretches to the new length)",
            trainer.state.options.epochs
        );
        trainer.state.options.epochs = epochs;
    }
    if given(matches, "threads") {
        trainer.state.options.threads = args.threads;
    }
    if given(matches, "workers") {
        trainer.state.options.loader_workers = args.workers.max(1);
    }
    Ok(recorded.clone())
}
