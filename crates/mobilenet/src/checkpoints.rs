//! The ImageNet accuracy of Google's released MobileNet v1 checkpoints, for choosing α and the
//! resolution against a latency budget (`mobilenet pick`).
//!
//! Source: TF-slim's `research/slim/nets/mobilenet_v1.md` (the 2018_02_22 release: single
//! centre crop, ILSVRC-2012 validation, 1001 classes). "Quant" is the `_quant` checkpoints:
//! quantization-aware training (contrib/quantize) converted by TFLite to 8 bits. Copied in
//! `../shared/docs/MOBILENET_REFERENCE.md` §2.1.

/// One released checkpoint's published accuracy (percent).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PublishedAccuracy {
    /// Width multiplier α.
    pub alpha: f64,
    /// Input resolution ρ.
    pub resolution: usize,
    /// Float top-1 and top-5.
    pub top1: f64,
    /// See `top1`.
    pub top5: f64,
    /// 8-bit (`_quant`) top-1 and top-5.
    pub quant_top1: f64,
    /// See `quant_top1`.
    pub quant_top5: f64,
}

const fn row(
    alpha: f64,
    resolution: usize,
    top1: f64,
    top5: f64,
    quant_top1: f64,
    quant_top5: f64,
) -> PublishedAccuracy {
    PublishedAccuracy {
        alpha,
        resolution,
        top1,
        top5,
        quant_top1,
        quant_top5,
    }
}

/// The 16 α × resolution checkpoints.
pub const TF_SLIM_CHECKPOINTS: [PublishedAccuracy; 16] = [
    row(1.0, 224, 70.9, 89.9, 69.7, 89.5),
    row(1.0, 192, 70.0, 89.2, 69.0, 88.9),
    row(1.0, 160, 68.0, 87.7, 67.3, 87.7),
    row(1.0, 128, 65.2, 85.8, 64.0, 85.5),
    row(0.75, 224, 68.4, 88.2, 67.9, 88.1),
    row(0.75, 192, 67.2, 87.3, 66.2, 87.1),
    row(0.75, 160, 65.3, 86.0, 63.9, 85.5),
    row(0.75, 128, 62.1, 83.9, 59.8, 82.8),
    row(0.5, 224, 63.3, 84.9, 62.2, 84.5),
    row(0.5, 192, 61.7, 83.6, 60.4, 83.2),
    row(0.5, 160, 59.1, 81.9, 57.7, 81.3),
    row(0.5, 128, 56.3, 79.4, 54.9, 78.9),
    row(0.25, 224, 49.8, 74.2, 48.2, 73.8),
    row(0.25, 192, 47.7, 72.3, 45.8, 71.9),
    row(0.25, 160, 45.5, 70.3, 43.5, 69.1),
    row(0.25, 128, 41.5, 66.3, 39.9, 65.8),
];

/// The published accuracy of the checkpoint at `alpha` and `resolution`, if Google released one.
pub fn published(alpha: f64, resolution: usize) -> Option<PublishedAccuracy> {
    TF_SLIM_CHECKPOINTS
        .iter()
        .find(|c| (c.alpha - alpha).abs() < 1e-9 && c.resolution == resolution)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alpha_and_resolution_once_and_accuracy_falls_with_either() {
        for alpha in [0.25, 0.5, 0.75, 1.0] {
            let mut last = f64::INFINITY;
            // The paper's Table 7 trend: lower resolution, lower accuracy.
            for res in [224, 192, 160, 128] {
                let c = published(alpha, res).expect("released");
                assert!(c.top1 < last && c.quant_top1 <= c.top1 && c.top5 > c.top1);
                last = c.top1;
            }
        }
        // Table 6's α rows at 224 (70.6 / 68.4 / 63.7 / 50.6 in the paper; the 2018 release
        // improved 1.0 and shifted the others a little).
        assert_eq!(published(1.0, 224).map(|c| c.top1), Some(70.9));
        assert_eq!(published(0.6, 224), None);
    }
}
