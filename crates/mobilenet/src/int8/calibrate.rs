//! Calibration: the activation ranges of a float model on sample images, which post-training
//! quantization ([`super::quantize`]) turns into the int8 tensors' scales and zero points.

use std::collections::HashMap;
use std::ops::Range;

use crate::error::ModelError;
use crate::infer::{Fusion, InferenceModel};
use crate::layers::LayerKind;
use crate::weights::ModelFile;

/// Output ranges of every layer seen on calibration images.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// `(min, max)` of each layer's output, by layer-table name.
    ranges: HashMap<String, (f32, f32)>,
    images: usize,
}

/// Bins of the activation histograms used to choose clipping ranges.
const BINS: usize = 2048;

/// The upper clip `c ≤ max` of a non-negative activation with histogram `hist` over
/// `[0, max]` that minimises the expected squared error of 8-bit quantization over `[0, c]`:
/// values above `c` lose `(v − c)²`, values inside `step²/12` with `step = c/255`.
fn mse_clip(hist: &[u64], max: f32) -> f32 {
    let width = max as f64 / hist.len() as f64;
    let total: u64 = hist.iter().sum();
    if total == 0 || max <= 0.0 {
        return max;
    }
    let (mut best, mut best_err) = (max, f64::INFINITY);
    // Candidates: the upper edge of every bin from 1/16 of the range up.
    for edge in (hist.len() / 16).max(1)..=hist.len() {
        let c = edge as f64 * width;
        let step = c / 255.0;
        let mut err = 0.0;
        let mut inside = 0u64;
        for (b, &n) in hist.iter().enumerate() {
            if b < edge {
                inside += n;
            } else {
                let centre = (b as f64 + 0.5) * width;
                err += n as f64 * (centre - c).powi(2);
            }
        }
        err += inside as f64 * step * step / 12.0;
        if err < best_err {
            (best, best_err) = (c as f32, err);
        }
    }
    best
}

impl Calibration {
    /// Images observed so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// The observed `(min, max)` of a layer's output.
    pub fn range(&self, layer: &str) -> Option<(f32, f32)> {
        self.ranges.get(layer).copied()
    }
}

/// Runs the float model layer by layer (no fusion, so that every layer's output is seen) on
/// calibration batches and records output ranges.
///
/// Ranges are the observed min/max, except for non-negative (post-ReLU) activations when
/// [`Calibrator::observe_histogram`] ran a second pass: their upper end is then the clip that
/// minimises the expected quantization error. (Min/max is TFLite's converter default and costs
/// MobileNet v1 about five points of top-1, reference doc §2.3: one outlier at 6 sets a step
/// that most values, far below it, pay for.)
#[derive(Debug)]
pub struct Calibrator {
    model: InferenceModel,
    calibration: Calibration,
    histograms: HashMap<String, Vec<u64>>,
    /// Named channel groups of each head's output.
    heads: Vec<Vec<(String, Range<usize>)>>,
}

impl Calibrator {
    /// A calibrator for `file`.
    ///
    /// # Errors
    ///
    /// A weight the layer table needs is missing or of the wrong size.
    pub fn new(file: &ModelFile) -> Result<Calibrator, ModelError> {
        Ok(Calibrator {
            model: InferenceModel::with_options(
                file,
                mobilenet_kernels::Isa::detect(),
                Fusion::None,
            )?,
            calibration: Calibration::default(),
            histograms: HashMap::new(),
            heads: Vec::new(),
        })
    }

    /// A calibrator for a plan with heads (a detector's, planned without fusion so that every
    /// layer's output is seen): `heads[i]` names groups of head `i`'s output channels, each
    /// observed as one range.
    pub(crate) fn with_heads(
        model: InferenceModel,
        heads: Vec<Vec<(String, Range<usize>)>>,
    ) -> Self {
        Calibrator {
            model,
            calibration: Calibration::default(),
            histograms: HashMap::new(),
            heads,
        }
    }

    /// Values per preprocessed image.
    pub fn input_len(&self) -> usize {
        self.model.input_len()
    }

    /// Observes `images` (preprocessed, NHWC, whole images) on `threads` threads.
    ///
    /// # Panics
    ///
    /// If `images.len()` is not a multiple of [`Calibrator::input_len`].
    pub fn observe(&mut self, images: &[f32], threads: usize) {
        let n = images.len() / self.input_len();
        assert_eq!(n * self.input_len(), images.len(), "whole images only");
        if n == 0 {
            return;
        }
        let mut session = self.model.session(n, threads);
        let ranges = &mut self.calibration.ranges;
        session.run_observed(images, &mut |layer, out| {
            let (lo, hi) = out
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            let r = ranges.entry(layer.name.clone()).or_insert((lo, hi));
            *r = (r.0.min(lo), r.1.max(hi));
        });
        for (out, groups) in session.heads().into_iter().zip(&self.heads) {
            let channels = groups.iter().map(|g| g.1.end).max().unwrap_or(0);
            for (name, group) in groups {
                let (lo, hi) = out
                    .chunks_exact(channels)
                    .flat_map(|pixel| &pixel[group.clone()])
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                        (lo.min(v), hi.max(v))
                    });
                let r = ranges.entry(name.clone()).or_insert((lo, hi));
                *r = (r.0.min(lo), r.1.max(hi));
            }
        }
        self.calibration.images += n;
    }

    /// Second pass (after [`Calibrator::observe`] saw every image): histograms of the
    /// non-negative activations over their observed ranges.
    ///
    /// # Panics
    ///
    /// As [`Calibrator::observe`].
    pub fn observe_histogram(&mut self, images: &[f32], threads: usize) {
        let n = images.len() / self.input_len();
        assert_eq!(n * self.input_len(), images.len(), "whole images only");
        if n == 0 {
            return;
        }
        let mut session = self.model.session(n, threads);
        let (ranges, hists) = (&self.calibration.ranges, &mut self.histograms);
        session.run_observed(images, &mut |layer, out| {
            let Some(&(lo, hi)) = ranges.get(&layer.name) else {
                return;
            };
            if lo < 0.0 || hi <= 0.0 || layer.kind == LayerKind::AvgPool {
                return;
            }
            let h = hists
                .entry(layer.name.clone())
                .or_insert_with(|| vec![0; BINS]);
            let k = BINS as f32 / hi;
            for &v in out {
                h[((v * k) as usize).min(BINS - 1)] += 1;
            }
        });
    }

    /// The ranges: min/max, with error-minimising clips where histograms were taken.
    pub fn finish(mut self) -> Calibration {
        for (name, hist) in &self.histograms {
            if let Some(r) = self.calibration.ranges.get_mut(name) {
                r.1 = mse_clip(hist, r.1);
            }
        }
        self.calibration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_clip_drops_rare_outliers_and_keeps_dense_ranges() {
        // N values in [0, 1] and k at 6: for c ≥ 1 the error k·(6 − c)² + N·(c/255)²/12 is
        // least at c = 6k / (k + N/(12·255²)).
        let mut h = vec![0u64; BINS];
        for (b, n) in h.iter_mut().enumerate().take(BINS / 6) {
            *n = 10_000 + b as u64 % 3;
        }
        let inside: u64 = h.iter().sum();
        h[BINS - 1] = 3;
        let want = 18.0 / (3.0 + inside as f64 / (12.0 * 255.0 * 255.0));
        let c = mse_clip(&h, 6.0);
        assert!((c as f64 - want).abs() < 0.01, "clip {c}, want {want}");
        // Uniform over the whole range: nothing to clip.
        let c = mse_clip(&vec![100; BINS], 6.0);
        assert!(c > 5.8, "clip {c}");
    }
}
