//! What one training step is told and what it reports.

/// Settings of a training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOptions {
    /// Label smoothing of the cross-entropy target (0: off, as in the paper).
    pub label_smoothing: f32,
    /// Moving-average decay of the batch-norm statistics (TF-slim: 0.9997; 0.99 trains short
    /// runs better).
    pub bn_decay: f32,
    /// Whether the moving statistics are updated (false for gradient checks).
    pub update_bn_stats: bool,
    /// How a distilled step mixes the teacher's soft targets with the labels.
    pub distill: Option<Distill>,
    /// Batch norm frozen: normalise with the moving statistics (inference mode, as Keras
    /// fine-tunes) and leave them as they are; γ and β still train.
    pub bn_frozen: bool,
    /// Convolution layers at the input end that stay fixed (Keras's `fine_tune_at`): their
    /// batch norm uses the moving statistics, and the backward pass stops above them.
    pub frozen_layers: usize,
}

/// The mix of a distilled step's loss: `(1 − weight) · cross-entropy(labels) + weight · T² ·
/// KL(teacher at T ‖ student at T)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Distill {
    /// Weight of the teacher's term, in [0, 1].
    pub weight: f32,
    /// Temperature `T` ≥ 1 of both softmaxes.
    pub temperature: f32,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            label_smoothing: 0.0,
            bn_decay: 0.99,
            update_bn_stats: true,
            distill: None,
            bn_frozen: false,
            frozen_layers: 0,
        }
    }
}

/// Loss and accuracy of one training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch.
    pub loss: f32,
    /// Images whose arg-max logit is their label.
    pub correct: usize,
}
