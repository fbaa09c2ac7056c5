//! The options of a training run (the recipe besides the model and the data) and the ranges
//! they must lie in.

use serde::{Deserialize, Serialize};

use super::optim::{OptimizerKind, Schedule};
use crate::data::Augment;
use crate::infer::Precision;

/// Everything that defines a training run besides the model and the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f32,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// L2 weight decay on conv, pointwise and FC weights (never depthwise filters).
    pub weight_decay: f32,
    /// Label smoothing (0: off, as in the paper).
    pub label_smoothing: f32,
    /// Batch-norm moving-average decay.
    pub bn_decay: f32,
    /// Training augmentation.
    pub augment: Augment,
    /// Seed of shuffling, augmentation and dropout.
    pub seed: u64,
    /// Compute threads (0: all cores).
    pub threads: usize,
    /// Threads decoding and augmenting images ahead of the steps.
    pub loader_workers: usize,
    /// Epochs at the start that train only the classifier: the backbone is frozen (its batch
    /// norm uses the moving statistics, and no backward pass runs through it). 0: none.
    #[serde(default)]
    pub freeze_epochs: usize,
    /// Factor on the learning rate once the backbone is unfrozen (fine-tuning a pretrained
    /// network at the head's rate undoes what it learnt).
    #[serde(default = "one")]
    pub unfreeze_lr_scale: f32,
    /// Stop when the held-out accuracy has not improved for this many epochs.
    #[serde(default)]
    pub patience: Option<usize>,
    /// Batch norm frozen in every step: the moving statistics normalise and are not updated
    /// (inference mode, Keras's advice for fine-tuning a pretrained network on little data).
    #[serde(default)]
    pub freeze_bn: bool,
    /// Learn from a teacher model as well as from the labels.
    #[serde(default)]
    pub distill: Option<Distillation>,
    /// Base learning rate of the classifier, when it differs from [`TrainOptions::lr`] (a new
    /// head on a pretrained backbone learns faster than the backbone may change). It follows
    /// the same schedule and the same factor after unfreezing.
    #[serde(default)]
    pub head_lr: Option<f32>,
    /// Layers that stay fixed through the whole run (after any frozen-backbone epochs), from
    /// the input through this layer or block (`conv_7`; Keras's `fine_tune_at`).
    #[serde(default)]
    pub freeze_through: Option<String>,
    /// The arithmetic of the pointwise layers' GEMMs (bf16: see
    /// [`crate::train::TrainNet::set_precision`]).
    #[serde(default)]
    pub precision: Precision,
}

/// Knowledge distillation from a teacher (any model file `classifier::load` reads: f32 or a
/// quantized `.tflite`), run on every batch beside the student.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Distillation {
    /// The teacher's model file.
    pub teacher: std::path::PathBuf,
    /// Weight of the teacher's term in the loss, in [0, 1] (1: soft targets only).
    pub weight: f32,
    /// Temperature of both softmaxes, at least 1.
    pub temperature: f32,
}

fn one() -> f32 {
    1.0
}

impl TrainOptions {
    /// The factor on the learning rate in `epoch`: [`TrainOptions::unfreeze_lr_scale`] once a
    /// frozen backbone has been unfrozen, else 1.
    pub fn lr_scale(&self, epoch: usize) -> f32 {
        match self.freeze_epochs {
            0 => 1.0,
            n if epoch < n => 1.0,
            _ => self.unfreeze_lr_scale,
        }
    }

    /// Checks every value for a range that trains: a clear message instead of a run that
    /// diverges or silently does nothing.
    ///
    /// # Errors
    ///
    /// The first value out of range, named.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |v: f32| (0.0..1.0).contains(&v);
        let positive = |v: f32| v.is_finite() && v > 0.0;
        let checks: [(bool, String); 8] = [
            (
                self.epochs >= 1,
                format!("epochs {} must be at least 1", self.epochs),
            ),
            (
                self.batch_size >= 1,
                format!("batch size {} must be at least 1", self.batch_size),
            ),
            (
                positive(self.lr),
                format!("learning rate {} must be positive", self.lr),
            ),
            (
                self.weight_decay.is_finite() && self.weight_decay >= 0.0,
                format!("weight decay {} must be 0 or more", self.weight_decay),
            ),
            (
                unit(self.label_smoothing),
                format!("label smoothing {} must be in [0, 1)", self.label_smoothing),
            ),
            (
                unit(self.bn_decay),
                format!("batch-norm decay {} must be in [0, 1)", self.bn_decay),
            ),
            (
                self.head_lr.is_none_or(positive),
                format!(
                    "classifier learning rate {} must be positive",
                    self.head_lr.unwrap_or(0.0)
                ),
            ),
            (
                positive(self.unfreeze_lr_scale),
                format!(
                    "learning-rate factor after unfreezing {} must be positive",
                    self.unfreeze_lr_scale
                ),
            ),
        ];
        if let Some((_, message)) = checks.into_iter().find(|(ok, _)| !ok) {
            return Err(message);
        }
        if let Some(d) = &self.distill {
            if !(0.0..=1.0).contains(&d.weight) {
                return Err(format!(
                    "distillation weight {} must be in [0, 1]",
                    d.weight
                ));
            }
            if !(d.temperature.is_finite() && d.temperature >= 1.0) {
                return Err(format!(
                    "distillation temperature {} must be at least 1",
                    d.temperature
                ));
            }
        }
        match self.optimizer {
            OptimizerKind::RmsProp {
                decay,
                momentum,
                epsilon,
                ..
            } => {
                if !unit(decay) {
                    return Err(format!("RMSprop decay {decay} must be in [0, 1)"));
                }
                if !unit(momentum) {
                    return Err(format!("momentum {momentum} must be in [0, 1)"));
                }
                if !positive(epsilon) {
                    return Err(format!("RMSprop epsilon {epsilon} must be positive"));
                }
            }
            OptimizerKind::Sgd { momentum } if !unit(momentum) => {
                return Err(format!("momentum {momentum} must be in [0, 1)"));
            }
            OptimizerKind::Sgd { .. } => {}
            OptimizerKind::Adam {
                beta1,
                beta2,
                epsilon,
                ..
            } => {
                if !(unit(beta1) && unit(beta2)) {
                    return Err(format!("Adam β₁ {beta1} and β₂ {beta2} must be in [0, 1)"));
                }
                if !positive(epsilon) {
                    return Err(format!("Adam epsilon {epsilon} must be positive"));
                }
            }
        }
        match self.schedule {
            Schedule::Exponential { rate, every_epochs }
                if !(rate > 0.0 && rate <= 1.0 && positive(every_epochs)) =>
            {
                Err(format!(
                    "exponential schedule: rate {rate} must be in (0, 1] and the period \
                 {every_epochs} positive"
                ))
            }
            Schedule::Cosine { warmup_epochs }
                if !(warmup_epochs.is_finite() && warmup_epochs >= 0.0) =>
            {
                Err(format!("warm-up epochs {warmup_epochs} must be 0 or more"))
            }
            _ => Ok(()),
        }
    }
}
