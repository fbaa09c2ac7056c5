//! The training recipe's defaults: what `mobilenet train` (and any other front end) uses where
//! the user says nothing. They depend on the data: "small" images (at most 32 pixels a side:
//! CIFAR, Fashion-MNIST) train a narrow network with the small-input stem at their own size;
//! larger ones the paper's network at 224.

use super::optim::{OptimizerKind, RmsPropVariant};
use crate::config::Stem;
use crate::data::Augment;
use crate::preprocess::{PixelNorm, Preprocessing};

/// Whether images of this size count as small (see the module docs).
pub fn is_small(width: u32, height: u32) -> bool {
    width.max(height) <= 32
}

/// Width multiplier and input resolution: α 0.25 at 32 for small images, 1.0 at 224 otherwise.
pub fn default_shape(small: bool) -> (f64, usize) {
    if small {
        (0.25, 32)
    } else {
        (1.0, 224)
    }
}

/// The stem for an input resolution: the small-input stem (stride 1) up to 64 pixels.
pub fn default_stem(resolution: usize) -> Stem {
    if resolution <= 64 {
        Stem::SmallInput
    } else {
        Stem::Standard
    }
}

/// Preprocessing of a model trained from scratch: the whole image for small images, the
/// ImageNet central crop of 87.5% otherwise; pixels to [−1, 1].
pub fn default_preprocessing(small: bool) -> Preprocessing {
    Preprocessing {
        crop: if small { 1.0 } else { 0.875 },
        norm: PixelNorm::MinusOneToOne,
    }
}

/// Learning rate per optimiser. With ε = 1 the TF RMSprop step is about lr·g, so it takes a
/// larger rate than PyTorch's form; Adam's is Keras's and PyTorch's default.
pub fn default_lr(optimizer: &OptimizerKind) -> f32 {
    match optimizer {
        OptimizerKind::RmsProp {
            variant: RmsPropVariant::Tf,
            ..
        } => 0.1,
        OptimizerKind::RmsProp { .. } => 0.001,
        OptimizerKind::Sgd { .. } => 0.05,
        OptimizerKind::Adam { .. } => 0.001,
    }
}

/// Epochs: for small images about 180,000 images seen (20 epochs of the built-in 9,000, 3 of
/// the full 60,000 Fashion-MNIST set), at most 30; for large ones 10.
pub fn default_epochs(small: bool, train_len: usize) -> usize {
    if small {
        (180_000 / train_len.max(1)).clamp(1, 30)
    } else {
        10
    }
}

/// Batch-norm moving-average decay for `steps` steps per epoch: `1 − 1/steps`, so that the
/// moving statistics average over about one epoch, between 0.9 and 0.99. Large data sets get
/// 0.99 (the built-in demo's 141 steps, CIFAR-10's 782); a small folder whose epoch is a few
/// steps gets 0.9, so that the held-out statistics catch up within the run (at 0.99 and 4
/// steps an epoch they still held mostly the pretrained network's statistics after five
/// epochs, and held-out accuracy lagged training accuracy by tens of points).
pub fn default_bn_decay(steps: usize) -> f32 {
    (1.0 - 1.0 / steps.max(1) as f32).clamp(0.9, 0.99)
}

/// Augmentation: for small images a padded random crop and flip (`pad` pixels, else the
/// resolution's default), for large ones an Inception-style crop of at least 35% and a flip.
pub fn default_augment(small: bool, resolution: usize, pad: Option<u32>) -> Augment {
    match (small, pad) {
        (true, Some(pad)) => Augment::PadCropFlip { pad },
        (true, None) => Augment::default_for(resolution),
        (false, _) => Augment::CropFlip { min_scale: 0.35 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_images_get_the_small_recipe() {
        assert!(is_small(28, 28) && is_small(32, 32) && !is_small(33, 20));
        assert_eq!(default_shape(true), (0.25, 32));
        assert_eq!(default_stem(32), Stem::SmallInput);
        assert_eq!(default_stem(224), Stem::Standard);
        // The built-in 9,000 Fashion-MNIST images: 20 epochs.
        assert_eq!(default_epochs(true, 9000), 20);
        assert_eq!(default_epochs(true, 50_000), 3);
        assert_eq!(default_epochs(false, 9000), 10);
        assert_eq!(default_bn_decay(141), 0.99);
        assert_eq!(default_bn_decay(4), 0.9);
        assert!((default_bn_decay(40) - 0.975).abs() < 1e-6);
    }
}
