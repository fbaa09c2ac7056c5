//! The training loop: epochs of shuffled, augmented batches, the optimiser and schedule,
//! evaluation after each epoch, metrics, and checkpoints that resume a run exactly.
//!
//! A run directory holds:
//! - `checkpoint.safetensors`: weights, batch-norm statistics, optimiser state and the trainer's
//!   state (position, options, metrics so far) — everything a resume needs; written atomically
//!   after every epoch and on interruption.
//! - `model-last.safetensors`, `model-best.safetensors`: plain model files for `classify`/`eval`.
//! - `metrics.jsonl`: one JSON object per epoch (rewritten from the checkpointed history).
//!
//! In a group of ranks ([`crate::train::dist`], `new_in`/`resume_in`) every rank trains on its
//! shard of each global batch and rank 0 alone holds and writes the directory (`ranks.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::dist::Group;
use super::distill::{load_teacher, soft_targets, Teacher};
pub use super::failure::TrainFailure;
pub use super::history::{better, epochs_since_best, EpochMetrics, PartialEpoch};
use super::net::{Distill, StepOptions, TrainNet};
use super::optim::Optimizer;
pub use super::options::{Distillation, TrainOptions};
use super::profile::TrainOp;
use super::run::{DataRecord, RunLock};
use super::Rng;
use crate::classifier::Classifier;
use crate::data::{shuffle, Dataset, Loader};
use crate::eval::evaluate;
use crate::infer::InferenceModel;
use crate::weights::{write_atomic, ModelFile, Tensor};

mod ranks;
mod resume;

/// The trainer's position and history, stored in checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// The run's options.
    pub options: TrainOptions,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Next batch of that epoch.
    pub batch: usize,
    /// Steps taken in the whole run.
    pub step: u64,
    /// The epoch in progress so far.
    pub partial: PartialEpoch,
    /// Finished epochs.
    pub history: Vec<EpochMetrics>,
    /// Best held-out accuracy so far (−∞ before the first evaluation, stored as `null`).
    #[serde(deserialize_with = "neg_infinity_if_null")]
    pub best_val_accuracy: f32,
    /// The data the run trains on (absent in checkpoints written before it was recorded).
    #[serde(default)]
    pub data: Option<DataRecord>,
}

/// Refuses a run whose batch does not fit in the memory available.
fn check_memory(config: &crate::MobileNetConfig, batch: usize) -> Result<(), TrainFailure> {
    let need = TrainNet::memory_bytes(config, batch);
    crate::memory::check(need, || format!("training {config} on batches of {batch}"))?;
    Ok(())
}

/// JSON has no infinities: serde_json writes −∞ as `null`, which reads back as −∞.
fn neg_infinity_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NEG_INFINITY))
}

/// How a call to [`Trainer::run`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEnd {
    /// All epochs done.
    Finished,
    /// Stopped on request; a checkpoint of the exact position was written.
    Interrupted,
    /// Stopped early: the held-out accuracy has not improved for
    /// [`TrainOptions::patience`] epochs (the best model is kept).
    EarlyStopped,
}

/// Progress reports during a run.
pub trait Progress {
    /// After every step: epoch (0-based), batch, batches in the epoch, running loss and
    /// accuracy of the epoch, images per second.
    fn step(
        &mut self,
        epoch: usize,
        batch: usize,
        batches: usize,
        loss: f32,
        accuracy: f32,
        images_per_second: f32,
    );
    /// After every epoch, once its checkpoint and metrics are written.
    fn epoch(&mut self, metrics: &EpochMetrics, history: &[EpochMetrics]);
    /// An image left out of its batch because it does not decode (data sets that skip bad
    /// images); called again for the same file in every epoch.
    fn skipped(&mut self, _error: &str) {}
    /// Polled between steps: true to stop (the position is checkpointed).
    fn stop_requested(&self) -> bool {
        false
    }
}

/// A training run in progress.
#[derive(Debug)]
pub struct Trainer {
    /// The network.
    pub net: TrainNet,
    /// The optimiser and its state.
    pub optimizer: Optimizer,
    /// Position and history.
    pub state: TrainerState,
    dir: PathBuf,
    /// This process's hold on `dir` (rank 0's, in a group of ranks).
    _lock: Option<RunLock>,
    /// The teacher `new` loaded to check it, kept for the first `run`.
    teacher: Option<Teacher>,
}

/// File names in a run directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The last model, for classify and eval.
pub const MODEL_LAST: &str = "model-last.safetensors";
/// The model with the best held-out accuracy.
pub const MODEL_BEST: &str = "model-best.safetensors";
/// Per-epoch metrics.
pub const METRICS: &str = "metrics.jsonl";

impl Trainer {
    /// Adds the time since `start` to `op` when profiling.
    fn profile(&mut self, op: TrainOp, start: Instant) {
        if let Some(p) = self.net.profile_mut() {
            p.add(op, start);
        }
    }

    /// A new run from `model` writing to `dir`.
    pub fn new(
        model: &ModelFile,
        options: TrainOptions,
        dir: &Path,
    ) -> Result<Trainer, TrainFailure> {
        Trainer::new_in(model, options, dir, None)
    }

    /// A new run as one rank of `group` (`None`: alone): every rank trains, rank 0 alone
    /// holds and writes `dir` (see [`crate::train::dist`]).
    pub fn new_in(
        model: &ModelFile,
        options: TrainOptions,
        dir: &Path,
        group: Option<Group>,
    ) -> Result<Trainer, TrainFailure> {
        if let Some(g) = &group {
            ranks::check_batch(options.batch_size, g)?;
        }
        options.validate().map_err(TrainFailure::Options)?;
        check_memory(&model.config, options.batch_size)?;
        // A teacher that cannot serve is an error before the run directory is made.
        let teacher = match &options.distill {
            Some(d) => Some(Teacher(load_teacher(d, model.config.classes())?)),
            None => None,
        };
        let mut net = TrainNet::from_model(model, options.threads)?;
        net.set_precision(options.precision)?;
        if let Some(name) = &options.freeze_through {
            net.layers_through(name).map_err(TrainFailure::Options)?;
        }
        let optimizer = Optimizer::new(options.optimizer, options.weight_decay, &net.params);
        let lock = ranks::lock(dir, group.as_ref())?;
        net.set_group(group);
        Ok(Trainer {
            net,
            optimizer,
            state: TrainerState {
                options,
                epoch: 0,
                batch: 0,
                step: 0,
                partial: PartialEpoch::default(),
                history: Vec::new(),
                best_val_accuracy: f32::NEG_INFINITY,
                data: None,
            },
            dir: dir.to_path_buf(),
            _lock: lock,
            teacher,
        })
    }

    /// The first parameter, statistic or optimiser tensor holding a NaN or an infinity.
    fn first_non_finite(&self) -> Option<String> {
        let bad = |v: &[f32]| v.iter().any(|x| !x.is_finite());
        let params = self.net.params.iter().map(|p| (p.name.clone(), &p.value));
        let stats = self.net.buffers.iter().map(|(n, v)| (n.clone(), v));
        let opt = self.net.params.iter().enumerate().flat_map(|(i, p)| {
            [
                (
                    format!("optimizer/mean_square/{}", p.name),
                    &self.optimizer.mean_square[i],
                ),
                (
                    format!("optimizer/momentum/{}", p.name),
                    &self.optimizer.momentum[i],
                ),
            ]
        });
        params
            .chain(stats)
            .chain(opt)
            .find(|(_, v)| bad(v))
            .map(|(name, _)| name)
    }

    /// Refuses to write a state that holds NaN or infinity.
    fn check_finite(&self) -> Result<(), TrainFailure> {
        match self.first_non_finite() {
            Some(tensor) => Err(TrainFailure::NonFiniteState {
                tensor,
                epoch: self.state.epoch + 1,
            }),
            None => Ok(()),
        }
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the checkpoint (atomically).
    pub fn save_checkpoint(&self) -> Result<(), TrainFailure> {
        let model = self.net.to_model();
        let mut extra = BTreeMap::new();
        for (i, p) in self.net.params.iter().enumerate() {
            if !self.optimizer.mean_square[i].is_empty() {
                extra.insert(
                    format!("optimizer/mean_square/{}", p.name),
                    Tensor::new(p.shape.clone(), self.optimizer.mean_square[i].clone()),
                );
            }
            extra.insert(
                format!("optimizer/momentum/{}", p.name),
                Tensor::new(p.shape.clone(), self.optimizer.momentum[i].clone()),
            );
        }
        let mut metadata = std::collections::HashMap::new();
        let json = |v: serde_json::Result<String>| v.unwrap_or_default();
        metadata.insert(
            "trainer".to_string(),
            json(serde_json::to_string(&self.state)),
        );
        let opt_meta = Optimizer {
            mean_square: Vec::new(),
            momentum: Vec::new(),
            ..self.optimizer.clone()
        };
        metadata.insert(
            "optimizer".to_string(),
            json(serde_json::to_string(&opt_meta)),
        );
        let bytes = model.to_bytes_with(&extra, metadata)?;
        write_atomic(&self.dir.join(CHECKPOINT), &bytes)?;
        Ok(())
    }

    /// The teacher of a distilled run, checked against the student.
    fn teacher(&self, d: &Distillation) -> Result<Box<dyn Classifier>, TrainFailure> {
        load_teacher(d, self.net.config().classes())
    }

    /// Trains until the last epoch or a stop request.
    ///
    /// # Errors
    ///
    /// Data that cannot be loaded, files that cannot be written, a non-finite loss (the last
    /// checkpoint is left as it was).
    pub fn run(
        &mut self,
        train: &Dataset,
        val: &Dataset,
        progress: &mut dyn Progress,
    ) -> Result<RunEnd, TrainFailure> {
        let o = self.state.options.clone();
        let res = self.net.config().resolution();
        let pre = self.net.to_model().preprocessing;
        let group = self.net.group().cloned();
        let g = group.as_ref();
        // Rank 0 alone writes the run directory; every rank reports to `progress` (the CLI's
        // other ranks print nothing).
        let writes = g.is_none_or(|g| g.collective.rank() == 0);
        let batches = ranks::batches(train.len(), o.batch_size.max(1), g);
        let shard_batch = o.batch_size / g.map_or(1, |g| g.collective.size());
        let frozen_layers = match &o.freeze_through {
            Some(name) => self
                .net
                .layers_through(name)
                .map_err(TrainFailure::Options)?,
            None => 0,
        };
        let step_options = StepOptions {
            frozen_layers,
            bn_frozen: o.freeze_bn,
            distill: o.distill.as_ref().map(|d| Distill {
                weight: d.weight,
                temperature: d.temperature,
            }),
            label_smoothing: o.label_smoothing,
            bn_decay: o.bn_decay,
            update_bn_stats: true,
        };
        let mut grads = self.net.zero_gradients();
        let teacher_model = match (&o.distill, self.teacher.take()) {
            (Some(_), Some(Teacher(loaded))) => Some(loaded),
            (Some(d), None) => Some(self.teacher(d)?),
            (None, _) => None,
        };
        let mut teacher = teacher_model
            .as_ref()
            .map(|t| (t, t.runner(o.batch_size.max(1), o.threads)));
        // A frozen backbone's plan, built once for all the frozen epochs (nothing in it changes).
        let mut backbone: Option<InferenceModel> = None;
        while self.state.epoch < o.epochs {
            let epoch = self.state.epoch;
            let epoch_start = Instant::now();
            let mut order: Vec<usize> = (0..train.len()).collect();
            shuffle(
                &mut order,
                &mut Rng::new(o.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9)),
            );
            let loader_seed = o.seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
            // A frozen backbone runs in the inference engine (moving statistics, no
            // activations kept, no backward pass); only the classifier trains.
            let frozen = epoch < o.freeze_epochs;
            let lr_scale = o.lr_scale(epoch);
            if o.freeze_epochs > 0 && epoch == o.freeze_epochs && self.state.batch == 0 {
                // The second stage starts with a fresh optimiser, as Keras recompiles.
                self.optimizer.restart();
            }
            if frozen && backbone.is_none() {
                backbone = Some(InferenceModel::new(&self.net.to_model().backbone())?);
            }
            let mut features = backbone
                .as_ref()
                .filter(|_| frozen)
                .map(|b| b.session(o.batch_size.max(1), o.threads));
            if let Some(g) = g {
                order = ranks::shard(&order, o.batch_size, g);
            }
            let mut loader = Loader::new(
                train,
                order,
                shard_batch,
                self.state.batch,
                res,
                o.augment,
                pre,
                loader_seed,
                o.loader_workers,
            );
            loop {
                let t = Instant::now();
                let Some(batch) = loader.next() else { break };
                self.profile(TrainOp::Data, t);
                let mut batch = batch?;
                for e in &batch.skipped {
                    progress.skipped(&e.to_string());
                }
                let (empty, skipped) =
                    ranks::shards_loaded(g, batch.labels.is_empty(), batch.skipped.len());
                self.state.partial.skipped += skipped;
                if empty {
                    // Every image of the batch was skipped (in a group: of some rank's shard,
                    // and every rank skips the batch with it, so that they step together).
                    self.state.batch = batch.index + 1;
                    continue;
                }
                let t = Instant::now();
                let frac = epoch as f32 + batch.index as f32 / batches as f32;
                let lr = o.schedule.rate(o.lr, frac, o.epochs as f32) * lr_scale;
                let head_lr = o
                    .schedule
                    .rate(o.head_lr.unwrap_or(o.lr), frac, o.epochs as f32)
                    * lr_scale;
                let mut rng =
                    Rng::new(o.seed ^ self.state.step.wrapping_mul(0xA076_1D64_78BD_642F));
                // The teacher sees the batch as the student does (same crop and flip).
                let t_teacher = Instant::now();
                let soft = match (&mut teacher, &o.distill) {
                    (Some((model, runner)), Some(d)) => Some(soft_targets(
                        model.as_ref(),
                        runner.as_mut(),
                        &batch.images,
                        batch.labels.len(),
                        (res, &pre),
                        d.temperature,
                    )),
                    _ => None,
                };
                if soft.is_some() {
                    self.profile(TrainOp::Teacher, t_teacher);
                }
                let stats = match &mut features {
                    Some(session) => {
                        // The session takes whole batches: a short last one is padded.
                        let n = batch.labels.len();
                        let whole = session.batch();
                        let mut input = std::mem::take(&mut batch.images);
                        input.resize(whole * res * res * 3, 0.0);
                        let t_frozen = Instant::now();
                        let out = session.run(&input);
                        self.profile(TrainOp::FrozenBackbone, t_frozen);
                        let per = out.len() / whole;
                        self.net.head_step(
                            &out[..n * per],
                            &batch.labels,
                            soft.as_deref(),
                            &mut rng,
                            &step_options,
                            &mut grads,
                        )
                    }
                    None => match &soft {
                        Some(soft) => self.net.step_distilled(
                            &batch.images,
                            &batch.labels,
                            soft,
                            &mut rng,
                            &step_options,
                            &mut grads,
                        ),
                        None => self.net.step(
                            &batch.images,
                            &batch.labels,
                            &mut rng,
                            &step_options,
                            &mut grads,
                        ),
                    },
                };
                if !stats.loss.is_finite() {
                    return Err(TrainFailure::NonFinite {
                        loss: stats.loss,
                        epoch: epoch + 1,
                        batch: batch.index,
                    });
                }
                let first = match frozen {
                    true => self.net.classifier_param(),
                    false => self.net.first_param_of_layer(frozen_layers),
                };
                let head = self.net.classifier_param();
                let t_update = Instant::now();
                self.optimizer.update_split(
                    &mut self.net.params,
                    &grads,
                    first,
                    (head, lr, head_lr),
                );
                self.profile(TrainOp::Optimizer, t_update);
                // Images of the global batch (the step's statistics are the global batch's).
                let n = self.net.last_global_batch();
                if let Some(p) = self.net.profile_mut() {
                    p.steps += 1;
                    p.images += n;
                }
                let p = &mut self.state.partial;
                p.loss_sum += stats.loss as f64 * n as f64;
                p.correct += stats.correct;
                p.seen += n;
                p.step_seconds += t.elapsed().as_secs_f64();
                p.steps += 1;
                self.state.step += 1;
                self.state.batch = batch.index + 1;
                progress.step(
                    epoch,
                    batch.index,
                    batches,
                    (p.loss_sum / p.seen as f64) as f32,
                    p.correct as f32 / p.seen as f32,
                    (p.seen as f64 / p.step_seconds.max(1e-9)) as f32,
                );
                if ranks::any(g, progress.stop_requested()) && self.state.batch < batches {
                    self.check_finite()?;
                    if writes {
                        self.save_checkpoint()?;
                    }
                    return Ok(RunEnd::Interrupted);
                }
            }
            // End of epoch: evaluate with the moving statistics, record, checkpoint.
            self.check_finite()?;
            let t = Instant::now();
            let model = self.net.to_model();
            let plan = InferenceModel::new(&model)?;
            let sizes = (o.batch_size.max(1), o.threads, o.loader_workers);
            let (report, val_skipped) = match g {
                Some(g) => ranks::evaluate_shared(&plan, val, sizes, g)?,
                None => {
                    let report = evaluate(&plan, val, sizes.0, sizes.1, sizes.2)?;
                    let skipped = report.skipped.len();
                    (report, skipped)
                }
            };
            self.profile(TrainOp::Evaluation, t);
            for e in &report.skipped {
                progress.skipped(e);
            }
            let p = std::mem::take(&mut self.state.partial);
            let metrics = EpochMetrics {
                epoch: epoch + 1,
                train_loss: (p.loss_sum / p.seen.max(1) as f64) as f32,
                train_accuracy: p.correct as f32 / p.seen.max(1) as f32,
                val_loss: report.loss,
                val_accuracy: report.top1,
                val_top5: report.top5,
                lr: o.schedule.rate(o.lr, (epoch + 1) as f32, o.epochs as f32) * lr_scale,
                images_per_second: (p.seen as f64 / p.step_seconds.max(1e-9)) as f32,
                seconds: epoch_start.elapsed().as_secs_f32(),
                skipped_images: p.skipped + val_skipped,
            };
            self.state.history.push(metrics.clone());
            self.state.epoch += 1;
            self.state.batch = 0;
            // Rewritten whole from the history, so a run killed between this and its
            // checkpoint never ends up with an epoch twice.
            let lines: String = self
                .state
                .history
                .iter()
                .map(|m| serde_json::to_string(m).unwrap_or_default() + "\n")
                .collect();
            if epochs_since_best(&self.state.history) == 0 {
                self.state.best_val_accuracy = metrics.val_accuracy;
            }
            if writes {
                write_atomic(&self.dir.join(METRICS), lines.as_bytes())?;
                model.save(&self.dir.join(MODEL_LAST))?;
                if epochs_since_best(&self.state.history) == 0 {
                    model.save(&self.dir.join(MODEL_BEST))?;
                }
                self.save_checkpoint()?;
            }
            progress.epoch(&metrics, &self.state.history);
            if ranks::any(g, progress.stop_requested()) && self.state.epoch < o.epochs {
                return Ok(RunEnd::Interrupted);
            }
            if let Some(patience) = o.patience {
                let since_best = epochs_since_best(&self.state.history);
                if since_best >= patience && self.state.epoch < o.epochs {
                    return Ok(RunEnd::EarlyStopped);
                }
            }
        }
        Ok(RunEnd::Finished)
    }
}
