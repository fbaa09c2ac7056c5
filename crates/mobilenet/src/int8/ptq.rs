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

use super::calibrate::Calibration;
use crate::config::{Padding, Variant};
use crate::layers::{Layer, LayerKind};
use crate::tflite::{
    ElementType, FusedActivation, Graph, OpInfo, OpKind, Quantization, TensorInfo, TfPadding,
};
use crate::weights::ModelFile;

pub(crate) use crate::tflite::fused;
pub use crate::tflite::{LABELS_METADATA, PREPROCESSING_METADATA};

/// Why a model cannot be quantized.
#[derive(Debug, thiserror::Error)]
#[error("cannot quantize: {0}")]
pub struct QuantizeError(pub(crate) String);

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

/// A TFLite graph under construction, one tensor and operator at a time.
pub(crate) struct Builder {
    pub graph: Graph,
}

/// An activation tensor of the graph being built and its `(scale, zero point)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Act {
    pub tensor: usize,
    pub q: (f32, i64),
}

impl Builder {
    /// An empty graph whose input is an int8 image of `res × res` pixels quantized as `q`.
    pub fn new(res: usize, q: (f32, i64)) -> (Builder, Act) {
        let mut g = Builder {
            graph: Graph {
                tensors: Vec::new(),
                ops: Vec::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                metadata: Vec::new(),
            },
        };
        let tensor = g.activation("input".into(), vec![1, res, res, 3], q);
        g.graph.inputs.push(tensor);
        (g, Act { tensor, q })
    }

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

    /// Appends layer `l` (a convolution, depthwise, pointwise or classifier layer) reading
    /// `src`: `w` and `bias` are its float weights with batch norm folded, in our layouts;
    /// its output is quantized over `range` and clamped by `activation`. A 3×3 stride-2 layer
    /// with symmetric `padding` gets an explicit PAD.
    pub fn conv(
        &mut self,
        l: &Layer,
        (w, bias): (&[f32], &[f32]),
        src: Act,
        range: (f32, f32),
        activation: FusedActivation,
        padding: Padding,
    ) -> Act {
        let [oh, ow, cout] = l.output;
        let cin = l.input[2];
        let (tflite_w, shape, axis) = crate::tflite::tflite_weights(l, w);
        let per = tflite_w.len() / cout;
        // The int32 bias is b / (s_in·s_w): a channel with tiny (or no) weights but a real bias
        // — batch norm's β of a near-dead channel — needs its weight scale raised until the
        // bias fits with room to spare (2^30), as TFLite's converter does.
        let in_scale = src.q.0;
        let min_scale: Vec<f32> = bias
            .iter()
            .map(|&b| (b.abs() as f64 / (in_scale as f64 * (1u64 << 30) as f64)) as f32)
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
                let v = (b as f64 / (in_scale as f64 * ws as f64)).round();
                (v.clamp(i32::MIN as f64, i32::MAX as f64) as i32).to_le_bytes()
            })
            .collect();
        let wt = self.tensor(
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
        let bt = self.tensor(
            format!("{}/bias", l.name),
            vec![cout],
            ElementType::I32,
            qbias,
            Some(Quantization {
                scale: w_scales.iter().map(|&s| s * in_scale).collect(),
                zero_point: vec![0; cout],
                axis: 0,
            }),
        );
        let out_q = activation_params(range.0, range.1);
        let out_shape = if l.kind == LayerKind::Fc {
            vec![1, 1, 1, cout]
        } else {
            vec![1, oh, ow, cout]
        };
        let out = self.activation(format!("{}/output", l.name), out_shape, out_q);
        // 3×3 layers with symmetric padding at stride 2 (where it differs from SAME) get an
        // explicit PAD.
        let mut tf_padding = TfPadding::Same;
        let mut input = src.tensor;
        if l.kernel == 3 && l.stride == 2 && padding == Padding::Symmetric {
            let [ih, iw, _] = l.input;
            let pads: Vec<u8> = [0i32, 0, 1, 1, 1, 1, 0, 0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let pt = self.tensor(
                format!("{}/paddings", l.name),
                vec![4, 2],
                ElementType::I32,
                pads,
                None,
            );
            let padded = self.activation(
                format!("{}/padded", l.name),
                vec![1, ih + 2, iw + 2, cin],
                src.q,
            );
            self.op(
                OpKind::Pad {
                    paddings: [(0, 0), (1, 1), (1, 1), (0, 0)],
                },
                vec![Some(src.tensor), Some(pt)],
                padded,
            );
            input = padded;
            tf_padding = TfPadding::Valid;
        }
        let kind = if l.kind == LayerKind::Depthwise {
            OpKind::Depthwise {
                stride: (l.stride, l.stride),
                padding: tf_padding,
                activation,
                multiplier: 1,
            }
        } else {
            OpKind::Conv2d {
                stride: (l.stride, l.stride),
                padding: tf_padding,
                activation,
            }
        };
        self.op(kind, vec![Some(input), Some(wt), Some(bt)], out);
        Act {
            tensor: out,
            q: out_q,
        }
    }
}

/// The input quantization that turns 8-bit pixels as int8 (`pixel − 128`) into
/// `pixel · scale + offset`.
pub(crate) fn input_params(scale: f32, offset: f32) -> (f32, i64) {
    let zp = ((-offset / scale).round() - 128.0).clamp(-128.0, 127.0) as i64;
    (scale, zp)
}

/// The observed range of a layer's output.
pub(crate) fn range_of(calibration: &Calibration, name: &str) -> Result<(f32, f32), QuantizeError> {
    calibration
        .range(name)
        .ok_or_else(|| QuantizeError(format!("calibration saw no output of layer {name}")))
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
    let act = fused(config.activation());
    let (mut g, mut cur) = Builder::new(config.resolution(), input_params(a[0], b[0]));
    for l in config.layers() {
        let cout = l.output[2];
        if l.kind == LayerKind::AvgPool {
            // TFLite's int8 average pool does not rescale: output parameters = input's.
            let out = g.activation(format!("{}/output", l.name), vec![1, 1, 1, cout], cur.q);
            g.op(
                OpKind::AvgPool {
                    filter: (l.input[0], l.input[1]),
                    stride: (1, 1),
                    padding: TfPadding::Valid,
                },
                vec![Some(cur.tensor)],
                out,
            );
            cur.tensor = out;
            continue;
        }
        // Folded float weights in our layouts, and their biases.
        let (w, bias): (Vec<f32>, Vec<f32>) = if l.kind == LayerKind::Fc {
            let fc = file.fc(&l).map_err(|e| QuantizeError(e.to_string()))?;
            (fc.weight.to_vec(), fc.bias.to_vec())
        } else {
            let conv = file.conv(&l).map_err(|e| QuantizeError(e.to_string()))?;
            let (scale, bias) = conv.folded_bn(file.bn_epsilon);
            (crate::infer::scale_columns(conv.weight, &scale), bias)
        };
        let activation = if l.kind == LayerKind::Fc {
            FusedActivation::None
        } else {
            act
        };
        let range = range_of(calibration, &l.name)?;
        cur = g.conv(&l, (&w, &bias), cur, range, activation, config.padding());
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
            let logits = g.activation("logits".into(), vec![1, cout], cur.q);
            g.op(OpKind::Reshape, vec![Some(cur.tensor), Some(st)], logits);
            cur.tensor = logits;
        }
    }
    g.graph.outputs.push(cur.tensor);
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
