//! Training a detector: epochs of shuffled, augmented batches, COCO mAP after epochs,
//! checkpoints that resume a run, metrics per epoch.
//!
//! In the run directory: `checkpoint.safetensors` (the detector, the optimiser's state as
//! `optim/` tensors, the options and history in the metadata; written atomically after every
//! epoch), `detector.safetensors` (the latest weights, for `detect`), `metrics.jsonl`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::data::{prepare, DetectionData};
use super::loss::Targets;
use super::net::{SsdStepOptions, SsdTrainNet};
use crate::detect::{coco_evaluate, CocoDataset, Detector, DetectorFile, NmsConfig};
use crate::error::ModelError;
use crate::train::optim::{Optimizer, OptimizerKind, Schedule};
use crate::weights::{write_atomic, Tensor};
use crate::Rng;

/// The checkpoint's file name in the run directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The latest detector's file name.
pub const DETECTOR: &str = "detector.safetensors";
/// The metrics' file name.
pub const METRICS: &str = "metrics.jsonl";

/// The recipe of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SsdTrainOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f32,
    /// How it changes.
    pub schedule: Schedule,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// L2 weight decay (not on depthwise filters, batch norm or biases).
    pub weight_decay: f32,
    /// Decay of batch norm's moving statistics.
    pub bn_decay: f32,
    /// SSD's augmentation (photometric, crop, flip).
    pub augment: bool,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Evaluate every this many epochs (and after the last).
    pub eval_every: usize,
}

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SsdEpoch {
    /// 1-based.
    pub epoch: usize,
    /// Mean box loss over the epoch's steps.
    pub loss_boxes: f64,
    /// Mean class loss.
    pub loss_classes: f64,
    /// Learning rate at the epoch's end.
    pub lr: f32,
    /// Training images per second.
    pub images_per_s: f64,
    /// COCO mAP@[.5:.95] on the evaluation set, when evaluated.
    pub map: Option<f64>,
    /// AP50, when evaluated.
    pub ap50: Option<f64>,
}

/// Why a run stopped early, or what failed.
#[derive(Debug, thiserror::Error)]
pub enum SsdTrainError {
    /// A file could not be read or written.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An image could not be read.
    #[error(transparent)]
    Image(#[from] crate::ImageError),
    /// The loss stopped being a number.
    #[error("the loss is {0} at epoch {1}: lower the learning rate (the last checkpoint is kept)")]
    NotFinite(f64, usize),
    /// Anything else, in words.
    #[error("{0}")]
    Other(String),
}

/// Position and history, stored in the checkpoint's metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunState {
    options: SsdTrainOptions,
    history: Vec<SsdEpoch>,
    optimizer_step: u64,
}

/// A training run in a directory.
#[derive(Debug)]
pub struct SsdRun {
    dir: PathBuf,
    /// The network.
    pub net: SsdTrainNet,
    optimizer: Optimizer,
    /// The options.
    pub options: SsdTrainOptions,
    /// Epochs done.
    pub history: Vec<SsdEpoch>,
}

/// What [`SsdRun::run`] reports after each step.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Steps done in this epoch, and its steps.
    pub step: (usize, usize),
    /// This step's losses.
    pub loss_boxes: f64,
    /// See `loss_boxes`.
    pub loss_classes: f64,
}

impl SsdRun {
    /// A new run starting from `file` (written to `dir`, which is created).
    ///
    /// # Errors
    ///
    /// The directory cannot be created; the detector cannot be trained.
    pub fn new(
        dir: &Path,
        file: &DetectorFile,
        options: SsdTrainOptions,
        threads: usize,
    ) -> Result<SsdRun, SsdTrainError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let net = SsdTrainNet::new(file, threads)?;
        let optimizer = Optimizer::new(options.optimizer, options.weight_decay, &net.params);
        Ok(SsdRun {
            dir: dir.to_path_buf(),
            net,
            optimizer,
            options,
            history: Vec::new(),
        })
    }

    /// Resumes the run in `dir` from its checkpoint.
    ///
    /// # Errors
    ///
    /// No checkpoint, or one that does not read back.
    pub fn resume(dir: &Path, threads: usize) -> Result<SsdRun, SsdTrainError> {
        let path = dir.join(CHECKPOINT);
        let bytes = crate::files::read_regular(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let (file, extra, metadata) = DetectorFile::from_bytes_with(&bytes, &path, Some("optim/"))?;
        let state: RunState = metadata
            .get("ssd_run")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| {
                SsdTrainError::Other(format!("{}: not a train-detect checkpoint", path.display()))
            })?;
        let net = SsdTrainNet::new(&file, threads)?;
        let mut optimizer = Optimizer::new(
            state.options.optimizer,
            state.options.weight_decay,
            &net.params,
        );
        optimizer.step = state.optimizer_step;
        for (i, (ms, mom)) in optimizer
            .mean_square
            .iter_mut()
            .zip(&mut optimizer.momentum)
            .enumerate()
        {
            if let Some(t) = extra.get(&format!("optim/ms/{i}")) {
                *ms = t.data.clone();
            }
            if let Some(t) = extra.get(&format!("optim/mom/{i}")) {
                *mom = t.data.clone();
            }
        }
        Ok(SsdRun {
            dir: dir.to_path_buf(),
            net,
            optimizer,
            options: state.options,
            history: state.history,
        })
    }

    /// Writes the checkpoint, the detector and the metrics (atomically each).
    fn save(&self) -> Result<(), SsdTrainError> {
        let file = self.net.to_file()?;
        let mut extra = BTreeMap::new();
        for (i, (ms, mom)) in self
            .optimizer
            .mean_square
            .iter()
            .zip(&self.optimizer.momentum)
            .enumerate()
        {
            if !ms.is_empty() {
                extra.insert(
                    format!("optim/ms/{i}"),
                    Tensor::new(vec![ms.len()], ms.clone()),
                );
            }
            extra.insert(
                format!("optim/mom/{i}"),
                Tensor::new(vec![mom.len()], mom.clone()),
            );
        }
        let state = RunState {
            options: self.options.clone(),
            history: self.history.clone(),
            optimizer_step: self.optimizer.step,
        };
        let json =
            serde_json::to_string(&state).map_err(|e| SsdTrainError::Other(e.to_string()))?;
        let metadata = HashMap::from([("ssd_run".to_string(), json)]);
        write_atomic(
            &self.dir.join(CHECKPOINT),
            &file.to_bytes_with(&extra, metadata)?,
        )?;
        file.save(&self.dir.join(DETECTOR))?;
        let lines: String = self
            .history
            .iter()
            .filter_map(|e| serde_json::to_string(e).ok())
            .map(|l| l + "\n")
            .collect();
        write_atomic(&self.dir.join(METRICS), lines.as_bytes())?;
        Ok(())
    }

    /// Trains the remaining epochs on `data`, evaluating on `eval` (annotations and their
    /// images) as the options say. `on_step` sees every step; `on_epoch` every finished epoch
    /// (after its checkpoint); `stop` is polled between steps (the run then ends after
    /// writing nothing new: a resume restarts the interrupted epoch).
    ///
    /// # Errors
    ///
    /// An image that cannot be read, a loss that is not finite, a file that cannot be written.
    pub fn run(
        &mut self,
        data: &mut DetectionData,
        eval: Option<(&CocoDataset, &Path)>,
        on_step: &mut dyn FnMut(&StepReport),
        on_epoch: &mut dyn FnMut(&SsdEpoch),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), SsdTrainError> {
        let n = data.samples.len();
        let batch = self.options.batch_size.clamp(1, n.max(1));
        let steps = n / batch;
        if steps == 0 {
            return Err(SsdTrainError::Other("no images to train on".into()));
        }
        let side = self.net.config().input;
        let config = self.net.config().clone();
        let step_options = SsdStepOptions {
            bn_decay: self.options.bn_decay,
            negatives_per_positive: 3,
        };
        let mut grads = self.net.zero_gradients();
        let mut images = vec![0.0f32; batch * side * side * 3];
        while self.history.len() < self.options.epochs {
            let epoch = self.history.len() + 1;
            let mut rng =
                Rng::new(self.options.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let (mut sum_boxes, mut sum_classes) = (0.0, 0.0);
            let start = Instant::now();
            let mut lr = self.options.lr;
            for s in 0..steps {
                if stop() {
                    return Ok(());
                }
                let mut targets: Vec<Targets> = Vec::with_capacity(batch);
                for (b, &i) in order[s * batch..(s + 1) * batch].iter().enumerate() {
                    let img = data.image(i)?;
                    let out = &mut images[b * side * side * 3..(b + 1) * side * side * 3];
                    let aug = self.options.augment.then_some(&mut rng);
                    targets.push(prepare(&img, &data.samples[i], &config, aug, out));
                }
                let loss = self.net.step(&images, &targets, &step_options, &mut grads);
                if !loss.total().is_finite() {
                    return Err(SsdTrainError::NotFinite(loss.total(), epoch));
                }
                let progress = (epoch - 1) as f32 + (s + 1) as f32 / steps as f32;
                lr = self.options.schedule.rate(
                    self.options.lr,
                    progress,
                    self.options.epochs as f32,
                );
                self.optimizer.update(&mut self.net.params, &grads, lr);
                sum_boxes += loss.boxes;
                sum_classes += loss.classes;
                on_step(&StepReport {
                    epoch,
                    step: (s + 1, steps),
                    loss_boxes: loss.boxes,
                    loss_classes: loss.classes,
                });
            }
            let seconds = start.elapsed().as_secs_f64();
            let evaluate = epoch.is_multiple_of(self.options.eval_every.max(1))
                || epoch == self.options.epochs;
            let (map, ap50) = match (eval, evaluate) {
                (Some((annotations, images)), true) => {
                    let stats = self.evaluate(annotations, images)?;
                    (Some(stats.ap), Some(stats.ap50))
                }
                _ => (None, None),
            };
            let record = SsdEpoch {
                epoch,
                loss_boxes: sum_boxes / steps as f64,
                loss_classes: sum_classes / steps as f64,
                lr,
                images_per_s: (steps * batch) as f64 / seconds,
                map,
                ap50,
            };
            self.history.push(record.clone());
            self.save()?;
            on_epoch(&record);
        }
        Ok(())
    }

    /// COCO box AP of the current weights (moving statistics) on `annotations`.
    ///
    /// # Errors
    ///
    /// An image that cannot be read.
    pub fn evaluate(
        &self,
        annotations: &CocoDataset,
        images: &Path,
    ) -> Result<crate::detect::CocoStats, SsdTrainError> {
        let file = self.net.to_file()?;
        let detector = Detector::new(&file)?;
        let mut session = detector.session(0);
        let map = crate::detect::category_map(&file.config.labels, &annotations.categories)
            .map_err(SsdTrainError::Other)?;
        let nms = NmsConfig {
            min_score: 0.01,
            ..file.config.nms
        };
        let results = crate::detect::detect_dataset(
            &mut session,
            annotations,
            images,
            &nms,
            &map,
            &mut |_| {},
        )?;
        coco_evaluate(annotations, &results).map_err(|e| SsdTrainError::Other(e.to_string()))
    }
}
