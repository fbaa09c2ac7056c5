//! What a run records of its epochs, and which epoch was the best.

use serde::{Deserialize, Serialize};

/// Metrics of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f32,
    /// Training accuracy over the epoch (with augmentation and batch statistics).
    pub train_accuracy: f32,
    /// Held-out loss (moving statistics, no augmentation).
    pub val_loss: f32,
    /// Held-out top-1 accuracy.
    pub val_accuracy: f32,
    /// Held-out top-5 accuracy.
    pub val_top5: f32,
    /// Learning rate at the end of the epoch.
    pub lr: f32,
    /// Training images per second (steps only, evaluation excluded).
    pub images_per_second: f32,
    /// Wall-clock seconds of the epoch, evaluation included.
    pub seconds: f32,
    /// Training and held-out images left out because they do not decode (with
    /// `--skip-bad-images`).
    #[serde(default)]
    pub skipped_images: usize,
}

/// Sums over the steps of the current epoch so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    pub(super) loss_sum: f64,
    pub(super) correct: usize,
    pub(super) seen: usize,
    pub(super) step_seconds: f64,
    pub(super) steps: usize,
    #[serde(default)]
    pub(super) skipped: usize,
}

/// Whether epoch `m` did better on the held-out set than `than`: a higher accuracy, or the
/// same accuracy at a lower loss (a held-out set of a hundred images moves in steps of 1%, and
/// ties are common; the loss still tells the epochs apart).
pub fn better(m: &EpochMetrics, than: &EpochMetrics) -> bool {
    m.val_accuracy > than.val_accuracy
        || (m.val_accuracy == than.val_accuracy && m.val_loss < than.val_loss)
}

/// Epochs since the best one (see [`better`]; the first of equals).
pub fn epochs_since_best(history: &[EpochMetrics]) -> usize {
    let best =
        history
            .iter()
            .enumerate()
            .fold(
                None,
                |best: Option<(usize, &EpochMetrics)>, (i, m)| match best {
                    Some((_, b)) if !better(m, b) => best,
                    _ => Some((i, m)),
                },
            );
    best.map_or(0, |(i, _)| history.len() - 1 - i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(val_accuracy: f32, val_loss: f32) -> EpochMetrics {
        EpochMetrics {
            epoch: 1,
            train_loss: 1.0,
            train_accuracy: 0.5,
            val_loss,
            val_accuracy,
            val_top5: 0.9,
            lr: 0.1,
            images_per_second: 100.0,
            seconds: 1.0,
            skipped_images: 0,
        }
    }

    #[test]
    fn the_best_epoch_breaks_ties_by_loss() {
        let history = [epoch(0.65, 1.35), epoch(0.63, 1.20), epoch(0.65, 1.05)];
        assert_eq!(epochs_since_best(&history), 0, "same accuracy, lower loss");
        let history = [epoch(0.65, 1.05), epoch(0.65, 1.05), epoch(0.64, 0.5)];
        assert_eq!(epochs_since_best(&history), 2, "the first of equals");
        assert!(
            better(&epoch(0.66, 9.0), &epoch(0.65, 0.1)),
            "accuracy first"
        );
        assert_eq!(epochs_since_best(&[]), 0);
    }
}
