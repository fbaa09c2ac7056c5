//! Post-training quantization of a float model to an int8 TFLite graph.
//!
//! The recipe is TFLite's full-integer one (reference doc §4): batch norm folded into the
//! convolutions; weights symmetric int8 per output channel (per-tensor scales lose too much on
//! depthwise filters, whose channels differ by orders of magnitude); activations asymmetric
//! int8 per tensor, their ranges the min/max seen on calibration images; biases int32 at scale
//! `s_in·s_w`. The input is the 8-bit pixel as int8 (`pixel − 128`) with the scale and zero
//! point that reproduce the model's normalisation, so the quantized model takes raw pixels
//! like Google's. Symmetric padding is written as PAD + VALID convolution, the classifier as a
//! 1×1 convolution and a reshape to `[1, classes]` giving int8 logits.
//!
//! The result is a [`Graph`] that [`crate::tflite::write`] turns into a `.tflite` file, which
//! this crate's integer engine and TFLite run with the same output bytes.

use std::collections::HashMap;

use crate::config::{Activation, Padding, Variant};
use crate::error::ModelError;
use crate::infer::{Fusion, InferenceModel};
use crate::layers::LayerKind;
use crate::tflite::{
    ElementType, FusedActivation, Graph, OpInfo, OpKind, Quantization, TensorInfo, TfPadding,
};
use crate::weights::ModelFile;

/// Metadata entry holding the class labels, one per line.
pub const LABELS_METADATA: &str = "mobilenet_labels";
/// Metadata entry holding the preprocessing as JSON (the crop; normalisation is the input
/// quantization).
pub const PREPROCESSING_METADATA: &str = "mobilenet_preprocessing";

/// Why a model cannot be quantized.
#[derive(Debug, thiserror::Error)]
#[error("cannot quantize: {0}")]
pub struct QuantizeError(String);

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
        })
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

/// `(scale, zero point)` of an int8 tensor holding values in `[min, max]` (widened to hold
/// 0 exactly, as TFLite requires).
fn activation_params(min: f32, max: f32) -> (f32, i64) {
    let (min, max) = (min.min(0.0), max.max(0.0));
    if !(max - min).is_finite() || max - min <= 0.0 {
        return (1.0 / 255.0, -128);
    }
    let scale = (max - min) / 255.0;
    let zp = (-128.0 - min / scale).round().clamp(-128.0, 127.0) as i64;
    (scale, zp)
}

/// Symmetric per-channel int8 weights: `w` holds `channels` rows of equal length (channel
/// `c`'s values where `channel_of(i) = c`); returns the int8 bytes in the same order and the
/// scales. A channel's scale is at least `min_scale[c]` (so that its bias fits in int32), and
/// positive even for a channel of zeros.
fn quantize_weights(
    w: &[f32],
    channels: usize,
    channel_of: impl Fn(usize) -> usize,
    min_scale: &[f32],
) -> (Vec<u8>, Vec<f32>) {
    let mut absmax = vec![0f32; channels];
    for (i, &v) in w.iter().enumerate() {
        let c = channel_of(i);
        absmax[c] = absmax[c].max(v.abs());
    }
    let scales: Vec<f32> = absmax
        .iter()
        .zip(min_scale)
        .map(|(&m, &floor)| {
            let s = (m / 127.0).max(floor);
            if s > 0.0 && s.is_finite() {
                s
            } else {
                1.0
            }
        })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &v)| (v / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8 as u8)
        .collect();
    (q, scales)
}

struct Builder {
    graph: Graph,
}

impl Builder {
    fn tensor(
        &mut self,
        name: String,
        shape: Vec<usize>,
        kind: ElementType,
        data: Vec<u8>,
        q: Option<Quantization>,
    ) -> usize {
        self.graph.tensors.push(TensorInfo {
            name,
            shape,
            kind,
            data,
            quantization: q,
        });
        self.graph.tensors.len() - 1
    }

    fn activation(&mut self, name: String, shape: Vec<usize>, (scale, zp): (f32, i64)) -> usize {
        let q = Quantization {
            scale: vec![scale],
            zero_point: vec![zp],
            axis: 0,
        };
        self.tensor(name, shape, ElementType::I8, Vec::new(), Some(q))
    }

    fn op(&mut self, kind: OpKind, inputs: Vec<Option<usize>>, output: usize) {
        self.graph.ops.push(OpInfo {
            kind,
            inputs,
            outputs: vec![output],
        });
    }
}

/// Quantizes `file` with the activation ranges of `calibration` into an int8 TFLite graph
/// (with labels and the crop in its metadata).
///
/// # Errors
///
/// A configuration TFLite cannot express (the full-convolution variant, a per-channel pixel
/// normalisation), or a layer the calibration did not observe.
pub fn quantize(file: &ModelFile, calibration: &Calibration) -> Result<Graph, QuantizeError> {
    let config = &file.config;
    if config.variant() == Variant::FullConv {
        return Err(QuantizeError(
            "the full-convolution variant is not a depthwise-separable MobileNet".into(),
        ));
    }
    // Input: int8 q = pixel − 128 with real = s·(q − zp) = pixel·a + b.
    let (a, b) = file.preprocessing.norm.affine();
    if a.iter().any(|&v| v != a[0]) || b.iter().any(|&v| v != b[0]) {
        return Err(QuantizeError(format!(
            "the pixel normalisation {:?} differs per channel; a TFLite input has one scale",
            file.preprocessing.norm
        )));
    }
    let in_scale = a[0];
    let in_zp = ((-b[0] / a[0]).round() - 128.0).clamp(-128.0, 127.0) as i64;
    let act = match config.activation() {
        Activation::Relu => FusedActivation::Relu,
        Activation::Relu6 => FusedActivation::Relu6,
    };
    let mut g = Builder {
        graph: Graph {
            tensors: Vec::new(),
            ops: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            metadata: Vec::new(),
        },
    };
    let res = config.resolution();
    let mut cur = g.activation("input".into(), vec![1, res, res, 3], (in_scale, in_zp));
    g.graph.inputs.push(cur);
    let mut cur_q = (in_scale, in_zp);
    for l in config.layers() {
        let range = |name: &str| {
            calibration
                .range(name)
                .ok_or_else(|| QuantizeError(format!("calibration saw no output of layer {name}")))
        };
        let [oh, ow, cout] = l.output;
        let cin = l.input[2];
        match l.kind {
            LayerKind::AvgPool => {
                // TFLite's int8 average pool does not rescale: output parameters = input's.
                let out = g.activation(format!("{}/output", l.name), vec![1, 1, 1, cout], cur_q);
                g.op(
                    OpKind::AvgPool {
                        filter: (l.input[0], l.input[1]),
                        stride: (1, 1),
                        padding: TfPadding::Valid,
                    },
                    vec![Some(cur)],
                    out,
                );
                cur = out;
                continue;
            }
            LayerKind::Conv | LayerKind::Depthwise | LayerKind::Pointwise | LayerKind::Fc => {}
        }
        // Folded float weights in our layouts, and their biases.
        let (w, bias): (Vec<f32>, Vec<f32>) = if l.kind == LayerKind::Fc {
            let fc = file.fc(&l).map_err(|e| QuantizeError(e.to_string()))?;
            (fc.weight.to_vec(), fc.bias.to_vec())
        } else {
            let conv = file.conv(&l).map_err(|e| QuantizeError(e.to_string()))?;
            let (scale, bias) = conv.folded_bn(file.bn_epsilon);
            let w = conv.weight;
            let cols = if l.kind == LayerKind::Depthwise {
                cin
            } else {
                cout
            };
            (
                w.chunks_exact(cols)
                    .flat_map(|row| row.iter().zip(&scale).map(|(x, s)| x * s))
                    .collect(),
                bias,
            )
        };
        // TFLite layouts: OHWI (conv, 1×1), 1HWC (depthwise).
        let k = l.kernel;
        let (tflite_w, shape, axis): (Vec<f32>, Vec<usize>, usize) = match l.kind {
            LayerKind::Conv => {
                let mut o = vec![0.0; w.len()];
                for co in 0..cout {
                    for t in 0..k * k {
                        for ci in 0..cin {
                            o[(co * k * k + t) * cin + ci] = w[(t * cin + ci) * cout + co];
                        }
                    }
                }
                (o, vec![cout, k, k, cin], 0)
            }
            LayerKind::Depthwise => (w.clone(), vec![1, 3, 3, cin], 3),
            _ => {
                let mut o = vec![0.0; w.len()];
                for ci in 0..cin {
                    for co in 0..cout {
                        o[co * cin + ci] = w[ci * cout + co];
                    }
                }
                (o, vec![cout, 1, 1, cin], 0)
            }
        };
        let per = tflite_w.len() / cout;
        // The int32 bias is b / (s_in·s_w): a channel with tiny (or no) weights but a real bias
        // — batch norm's β of a near-dead channel — needs its weight scale raised until the
        // bias fits with room to spare (2^30), as TFLite's converter does.
        let min_scale: Vec<f32> = bias
            .iter()
            .map(|&b| (b.abs() as f64 / (cur_q.0 as f64 * (1u64 << 30) as f64)) as f32)
            .collect();
        let (qw, w_scales) = if axis == 3 {
            quantize_weights(&tflite_w, cout, |i| i % cout, &min_scale)
        } else {
            quantize_weights(&tflite_w, cout, |i| i / per, &min_scale)
        };
        let qbias: Vec<u8> = bias
            .iter()
            .zip(&w_scales)
            .flat_map(|(&b, &ws)| {
                let v = (b as f64 / (cur_q.0 as f64 * ws as f64)).round();
                (v.clamp(i32::MIN as f64, i32::MAX as f64) as i32).to_le_bytes()
            })
            .collect();
        let wt = g.tensor(
            format!("{}/weights", l.name),
            shape,
            ElementType::I8,
            qw,
            Some(Quantization {
                scale: w_scales.clone(),
                zero_point: vec![0; cout],
                axis,
            }),
        );
        let bt = g.tensor(
            format!("{}/bias", l.name),
            vec![cout],
            ElementType::I32,
            qbias,
            Some(Quantization {
                scale: w_scales.iter().map(|&s| s * cur_q.0).collect(),
                zero_point: vec![0; cout],
                axis: 0,
            }),
        );
        let (lo, hi) = range(&l.name)?;
        let out_q = activation_params(lo, hi);
        let out_shape = if l.kind == LayerKind::Fc {
            vec![1, 1, 1, cout]
        } else {
            vec![1, oh, ow, cout]
        };
        let out = g.activation(format!("{}/output", l.name), out_shape, out_q);
        // 3×3 layers with symmetric padding at stride 2 (where it differs from SAME) get an
        // explicit PAD.
        let mut padding = TfPadding::Same;
        let mut src = cur;
        if k == 3 && l.stride == 2 && config.padding() == Padding::Symmetric {
            let [ih, iw, _] = l.input;
            let pads: Vec<u8> = [0i32, 0, 1, 1, 1, 1, 0, 0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let pt = g.tensor(
                format!("{}/paddings", l.name),
                vec![4, 2],
                ElementType::I32,
                pads,
                None,
            );
            let padded = g.activation(
                format!("{}/padded", l.name),
                vec![1, ih + 2, iw + 2, cin],
                cur_q,
            );
            g.op(
                OpKind::Pad {
                    paddings: [(0, 0), (1, 1), (1, 1), (0, 0)],
                },
                vec![Some(cur), Some(pt)],
                padded,
            );
            src = padded;
            padding = TfPadding::Valid;
        }
        let activation = if l.kind == LayerKind::Fc {
            FusedActivation::None
        } else {
            act
        };
        let kind = if l.kind == LayerKind::Depthwise {
            OpKind::Depthwise {
                stride: (l.stride, l.stride),
                padding,
                activation,
                multiplier: 1,
            }
        } else {
            OpKind::Conv2d {
                stride: (l.stride, l.stride),
                padding,
                activation,
            }
        };
        g.op(kind, vec![Some(src), Some(wt), Some(bt)], out);
        cur = out;
        cur_q = out_q;
        if l.kind == LayerKind::Fc {
            let shape: Vec<u8> = [1i32, cout as i32]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let st = g.tensor(
                "logits/shape".into(),
                vec![2],
                ElementType::I32,
                shape,
                None,
            );
            let logits = g.activation("logits".into(), vec![1, cout], cur_q);
            g.op(OpKind::Reshape, vec![Some(cur), Some(st)], logits);
            cur = logits;
        }
    }
    g.graph.outputs.push(cur);
    if let Some(labels) = &file.labels {
        g.graph
            .metadata
            .push((LABELS_METADATA.into(), labels.join("\n").into_bytes()));
    }
    let pre = serde_json::to_vec(&file.preprocessing).map_err(|e| QuantizeError(e.to_string()))?;
    g.graph.metadata.push((PREPROCESSING_METADATA.into(), pre));
    Ok(g.graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_params_hold_zero_exactly() {
        let (s, z) = activation_params(0.0, 6.0);
        assert_eq!(z, -128);
        assert!((s - 6.0 / 255.0).abs() < 1e-9);
        let (s, z) = activation_params(-1.0, 3.0);
        // 0 maps to an integer: −1 → −128.
        assert!(((-1.0 / s) + z as f32 - -128.0).abs() < 0.5);
        assert_eq!(activation_params(0.0, 0.0), (1.0 / 255.0, -128));
        let (_, z) = activation_params(2.0, 5.0);
        assert_eq!(z, -128, "ranges are widened to hold 0");
    }

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

    #[test]
    fn weights_use_the_full_int8_range_per_channel() {
        // Two channels interleaved (depthwise layout): channel 1 is 100× smaller.
        let w = [1.0, 0.01, -0.6, -0.006, 0.25, 0.0025];
        let (q, s) = quantize_weights(&w, 2, |i| i % 2, &[0.0, 0.0]);
        assert_eq!(s, vec![1.0 / 127.0, 0.01 / 127.0]);
        let q: Vec<i8> = q.into_iter().map(|b| b as i8).collect();
        assert_eq!(q, vec![127, 127, -76, -76, 32, 32]);
        let (_, s) = quantize_weights(&[0.0, 0.0], 1, |_| 0, &[0.0]);
        assert!(s[0] > 0.0);
        // A bias that needs a larger scale gets it: weights shrink, the bias fits.
        let (q, s) = quantize_weights(&[1e-6, -1e-6], 1, |_| 0, &[0.5]);
        assert_eq!(s, vec![0.5]);
        assert_eq!(q, vec![0, 0]);
    }
}
