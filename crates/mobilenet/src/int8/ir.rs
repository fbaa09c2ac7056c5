//! Integer inference of quantized (uint8 per-tensor or int8 per-channel) MobileNet v1 TFLite
//! graphs, reproducing the arithmetic of TFLite's reference kernels: int32 accumulation of
//! `(x − x_zp)·(w − w_zp)` plus the int32 bias, requantization by a Q31 fixed-point multiplier
//! and shift (`QuantizeMultiplier`, `MultiplyByQuantizedMultiplier` with two roundings:
//! saturating rounding doubling high multiply, then rounding divide by a power of two),
//! the output zero point, and the clamp of the fused activation.
//!
//! Out-of-image taps are skipped, which is what padding with the input's zero point amounts to.
//! The average pool rounds half away from zero; the softmax uses TFLite's float lookup table
//! of `exp(−s·β·d)` for the 256 possible differences `d` to the row's maximum.
//!
//! This is the reference path: scalar, one image at a time. Fast integer kernels are to be
//! checked against it.

use std::path::Path;

use mobilenet_kernels::int8::requantize;

use crate::layers::LayerKind;
use crate::tflite::{
    ElementType, FusedActivation, Graph, MobileNetGraph, OpKind, TfPadding, TfliteError,
};

/// A real multiplier as TFLite stores it: `m · 2^shift` with `m` a Q31 fixed-point number in
/// [0.5, 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantizedMultiplier {
    /// Q31 mantissa.
    pub multiplier: i32,
    /// Power-of-two exponent (positive: left shift).
    pub shift: i32,
}

impl QuantizedMultiplier {
    /// TFLite's `QuantizeMultiplier`: `frexp`, round the fraction to Q31 (half away from zero),
    /// renormalise 2^31 to 2^30 with the exponent one higher, flush exponents below −31 to zero.
    pub fn new(real: f64) -> QuantizedMultiplier {
        if real == 0.0 || !real.is_finite() {
            return QuantizedMultiplier {
                multiplier: 0,
                shift: 0,
            };
        }
        let (fraction, mut shift) = frexp(real);
        let mut q = (fraction * (1i64 << 31) as f64).round() as i64;
        if q == 1i64 << 31 {
            q /= 2;
            shift += 1;
        }
        if shift < -31 {
            return QuantizedMultiplier {
                multiplier: 0,
                shift: 0,
            };
        }
        QuantizedMultiplier {
            multiplier: q as i32,
            shift,
        }
    }

    /// TFLite's `MultiplyByQuantizedMultiplier(x, m, shift)`.
    pub fn apply(self, x: i32) -> i32 {
        requantize(x, self.multiplier, self.shift)
    }
}

/// `x = fraction · 2^exponent` with |fraction| in [0.5, 1), as C's `frexp`.
fn frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        // Subnormal: scale up first.
        let (f, e) = frexp(x * (1u64 << 54) as f64);
        return (f, e - 54);
    }
    let fraction = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (fraction, exp - 1022)
}

/// A convolution of the integer IR (stem, depthwise, pointwise, or the classifier as a 1×1
/// convolution on a 1×1 map).
#[derive(Clone, Debug)]
pub(crate) struct QConv {
    pub depthwise: bool,
    /// Weights as i32 with the zero point already subtracted: OHWI (conv) or HWC (depthwise).
    pub weights: Vec<i32>,
    /// The weights' zero point per output channel (one value: all channels).
    pub weight_zp: Vec<i32>,
    /// The weights are int8 (uint8 otherwise).
    pub weight_signed: bool,
    pub bias: Vec<i32>,
    pub k: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub cin: usize,
    pub cout: usize,
    pub in_hw: (usize, usize),
    pub out_hw: (usize, usize),
    pub input_zp: i32,
    pub multipliers: Vec<QuantizedMultiplier>,
    pub output_zp: i32,
    pub act: (i32, i32),
}

/// One quantized layer of the plan.
#[derive(Clone, Debug)]
pub(crate) enum QOp {
    Conv(QConv),
    AvgPool {
        hw: usize,
        c: usize,
        /// Round half away from zero (int8) or add half and truncate (uint8, values ≥ 0).
        act: (i32, i32),
    },
    Softmax {
        table: Vec<f32>,
        output_scale: f32,
        output_zp: i32,
        /// Elements are int8 (indices offset by 128) rather than uint8.
        signed: bool,
    },
}

/// A quantized MobileNet ready to run with integer arithmetic.
#[derive(Clone, Debug)]
pub struct QuantModel {
    pub(crate) ops: Vec<QOp>,
    /// Element type of the activations (uint8 or int8).
    pub kind: ElementType,
    /// Input quantization `(scale, zero point)`.
    pub input: (f32, i32),
    /// Output quantization `(scale, zero point)`.
    pub output: (f32, i32),
    /// Values per input image.
    pub input_len: usize,
}

fn qrange(kind: ElementType) -> (i32, i32) {
    if kind == ElementType::I8 {
        (-128, 127)
    } else {
        (0, 255)
    }
}

impl QuantModel {
    /// Plans the integer execution of a quantized MobileNet graph.
    pub fn new(
        graph: &Graph,
        net: &MobileNetGraph,
        path: &Path,
    ) -> Result<QuantModel, TfliteError> {
        let bad = |reason: String| TfliteError {
            path: path.to_path_buf(),
            reason,
        };
        let t = |i: usize| &graph.tensors[i];
        let kind = t(net.input).kind;
        if kind != ElementType::U8 && kind != ElementType::I8 {
            return Err(bad(format!(
                "input is {kind:?}: the integer engine runs uint8 or int8 graphs"
            )));
        }
        let (qmin, qmax) = qrange(kind);
        let q = |i: usize| -> Result<(Vec<f32>, Vec<i64>), TfliteError> {
            let qp = t(i)
                .quantization
                .as_ref()
                .ok_or_else(|| bad(format!("tensor {:?} is not quantized", t(i).name)))?;
            if qp.scale.is_empty() {
                return Err(bad(format!(
                    "tensor {:?} has no quantization scale",
                    t(i).name
                )));
            }
            // TFLite's own checks: positive finite scales, zero points inside the type.
            if let Some(s) = qp.scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                return Err(bad(format!("tensor {:?} has scale {s}", t(i).name)));
            }
            let range = match t(i).kind {
                ElementType::U8 => 0..=255,
                ElementType::I8 => -128..=127,
                _ => 0..=0,
            };
            if let Some(z) = qp.zero_point.iter().find(|z| !range.contains(*z)) {
                return Err(bad(format!(
                    "tensor {:?} ({:?}) has zero point {z}",
                    t(i).name,
                    t(i).kind
                )));
            }
            Ok((qp.scale.clone(), qp.zero_point.clone()))
        };
        let as_i32 = |i: usize| -> Vec<i32> {
            let d = &t(i).data;
            match t(i).kind {
                ElementType::U8 => d.iter().map(|&b| b as i32).collect(),
                ElementType::I8 => d.iter().map(|&b| b as i8 as i32).collect(),
                _ => d
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            }
        };
        let table: Vec<_> = net
            .config
            .layers()
            .into_iter()
            .filter(|l| l.kind != LayerKind::AvgPool)
            .collect();
        // Map graph operators to layers: conv-like ops in order, then the pool, the head.
        let mut ops = Vec::new();
        let mut layer_iter = table.iter().zip(&net.layers);
        // A PAD's (top, left), applied by the convolution after it.
        let mut pending_pad: Option<(usize, usize)> = None;
        for op in &graph.ops {
            match &op.kind {
                OpKind::Pad { paddings } => {
                    pending_pad = Some((paddings[1].0, paddings[2].0));
                }
                OpKind::Conv2d {
                    activation,
                    padding,
                    stride,
                }
                | OpKind::Depthwise {
                    activation,
                    padding,
                    stride,
                    ..
                } => {
                    let (l, ct) = layer_iter
                        .next()
                        .ok_or_else(|| bad("more convolutions than layers".into()))?;
                    let depthwise = matches!(op.kind, OpKind::Depthwise { .. });
                    let (in_s, in_z) = q(ct.input)?;
                    let (w_s, w_z) = q(ct.weights)?;
                    let (out_s, out_z) = q(ct.output)?;
                    let (cin, cout) = (l.input[2], l.output[2]);
                    let k = if l.kind == LayerKind::Pointwise || l.kind == LayerKind::Fc {
                        1
                    } else {
                        3
                    };
                    let raw = as_i32(ct.weights);
                    let per_channel = w_s.len() > 1;
                    let want = if depthwise {
                        9 * cout
                    } else {
                        k * k * cin * cout
                    };
                    check_lengths(
                        &bad,
                        l.name.as_str(),
                        raw.len(),
                        want,
                        w_s.len(),
                        cout,
                        ct.bias.map(|b| as_i32(b).len()),
                    )?;
                    let weights: Vec<i32> = raw
                        .iter()
                        .enumerate()
                        .map(|(i, &w)| {
                            let ch = if depthwise {
                                i % cout
                            } else {
                                i / (raw.len() / cout)
                            };
                            w - w_z[if per_channel { ch } else { 0 }] as i32
                        })
                        .collect();
                    let bias = match ct.bias {
                        Some(b) => as_i32(b),
                        None => vec![0; cout],
                    };
                    let multipliers = (0..cout)
                        .map(|ch| {
                            let ws = w_s[if per_channel { ch } else { 0 }];
                            QuantizedMultiplier::new(effective_scale(
                                in_s[0],
                                ws,
                                out_s[0],
                                kind == ElementType::U8,
                            ))
                        })
                        .collect();
                    let output_zp = out_z[0] as i32;
                    let act = activation_range(activation, out_s[0], output_zp, qmin, qmax);
                    let (ih, iw) = (l.input[0], l.input[1]);
                    let (oh, ow) = (l.output[0], l.output[1]);
                    let (pad_top, pad_left) = match (pending_pad.take(), padding) {
                        (Some(p), _) => p,
                        (None, TfPadding::Same) => {
                            let total =
                                |o: usize, i: usize, s: usize| ((o - 1) * s + k).saturating_sub(i);
                            (total(oh, ih, stride.0) / 2, total(ow, iw, stride.1) / 2)
                        }
                        (None, TfPadding::Valid) => (0, 0),
                    };
                    ops.push(QOp::Conv(QConv {
                        depthwise,
                        weights,
                        weight_zp: w_z.iter().map(|&z| z as i32).collect(),
                        weight_signed: t(ct.weights).kind == ElementType::I8,
                        bias,
                        k,
                        stride: stride.0,
                        pad_top,
                        pad_left,
                        cin,
                        cout,
                        in_hw: (ih, iw),
                        out_hw: (oh, ow),
                        input_zp: in_z[0] as i32,
                        multipliers,
                        output_zp,
                        act,
                    }));
                }
                OpKind::FullyConnected { activation } => {
                    let (l, ct) = layer_iter
                        .next()
                        .ok_or_else(|| bad("more layers than the table".into()))?;
                    let (in_s, in_z) = q(ct.input)?;
                    let (w_s, w_z) = q(ct.weights)?;
                    let (out_s, out_z) = q(ct.output)?;
                    let (cin, cout) = (l.input[2], l.output[2]);
                    check_lengths(
                        &bad,
                        "fc",
                        as_i32(ct.weights).len(),
                        cin * cout,
                        w_s.len().min(1),
                        cout,
                        ct.bias.map(|b| as_i32(b).len()),
                    )?;
                    let weights = as_i32(ct.weights)
                        .iter()
                        .map(|&w| w - w_z[0] as i32)
                        .collect();
                    let bias = ct.bias.map_or(vec![0; cout], as_i32);
                    let m =
                        QuantizedMultiplier::new(effective_scale(in_s[0], w_s[0], out_s[0], true));
                    ops.push(QOp::Conv(QConv {
                        depthwise: false,
                        weights,
                        weight_zp: vec![w_z[0] as i32],
                        weight_signed: t(ct.weights).kind == ElementType::I8,
                        bias,
                        k: 1,
                        stride: 1,
                        pad_top: 0,
                        pad_left: 0,
                        cin,
                        cout,
                        in_hw: (1, 1),
                        out_hw: (1, 1),
                        input_zp: in_z[0] as i32,
                        multipliers: vec![m; cout],
                        output_zp: out_z[0] as i32,
                        act: activation_range(activation, out_s[0], out_z[0] as i32, qmin, qmax),
                    }));
                }
                OpKind::AvgPool { .. } => {
                    let [h, w, c] = net.config.feature_shape();
                    ops.push(QOp::AvgPool {
                        hw: h * w,
                        c,
                        act: (qmin, qmax),
                    });
                }
                OpKind::Reshape => {}
                OpKind::Softmax { beta } => {
                    let input = op
                        .inputs
                        .first()
                        .copied()
                        .flatten()
                        .ok_or_else(|| bad("softmax without input".into()))?;
                    let (in_s, _) = q(input)?;
                    let output = *op
                        .outputs
                        .first()
                        .ok_or_else(|| bad("softmax without output".into()))?;
                    let (out_s, out_z) = q(output)?;
                    let scale = -in_s[0] * beta;
                    let mut table = vec![0.0f32; 256];
                    for v in 0..=255i32 {
                        table[(255 - v) as usize] = (scale * v as f32).exp();
                    }
                    ops.push(QOp::Softmax {
                        table,
                        output_scale: out_s[0],
                        output_zp: out_z[0] as i32,
                        signed: kind == ElementType::I8,
                    });
                }
            }
        }
        let (is, iz) = q(net.input)?;
        let (os, oz) = q(net.output)?;
        let r = net.config.resolution();
        Ok(QuantModel {
            ops,
            kind,
            input: (is[0], iz[0] as i32),
            output: (os[0], oz[0] as i32),
            input_len: r * r * 3,
        })
    }
}

/// The real requantization multiplier `s_in·s_w / s_out` as TFLite derives it. The legacy
/// path (uint8 convolutions, every fully connected layer: `GetQuantizedConvolutionMultipler`)
/// multiplies `s_in·s_w` in single precision before widening; int8 convolutions widen each
/// scale first. The difference moves the Q31 multiplier by a unit now and then, which is enough
/// to change a rounding: with the double product, 1.0_224's 1024 outputs are off by up to 4.
fn effective_scale(input: f32, weight: f32, output: f32, legacy: bool) -> f64 {
    let product = if legacy {
        (input * weight) as f64
    } else {
        input as f64 * weight as f64
    };
    product / output as f64
}

/// A layer's weights, per-channel scales and bias hold as many values as its shape needs.
fn check_lengths(
    bad: &dyn Fn(String) -> TfliteError,
    layer: &str,
    weights: usize,
    want: usize,
    scales: usize,
    cout: usize,
    bias: Option<usize>,
) -> Result<(), TfliteError> {
    if weights != want {
        return Err(bad(format!(
            "layer {layer} has {weights} weights, its shape needs {want}"
        )));
    }
    if scales != 1 && scales != cout {
        return Err(bad(format!(
            "layer {layer} has {scales} weight scales for {cout} channels"
        )));
    }
    match bias {
        Some(n) if n != cout => Err(bad(format!(
            "layer {layer} has {n} biases for {cout} channels"
        ))),
        _ => Ok(()),
    }
}

/// TFLite's `CalculateActivationRangeQuantized`: the fused activation's bounds in the output's
/// quantized domain, intersected with the type's range.
fn activation_range(
    act: &FusedActivation,
    scale: f32,
    zp: i32,
    qmin: i32,
    qmax: i32,
) -> (i32, i32) {
    let quantize = |v: f32| zp + (v / scale).round() as i32;
    match act {
        FusedActivation::Relu => (qmin.max(quantize(0.0)), qmax),
        FusedActivation::Relu6 => (qmin.max(quantize(0.0)), qmax.min(quantize(6.0))),
        _ => (qmin, qmax),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_helpers_match_their_definitions() {
        // 0.75 = 0.75·2^0 → Q31 0.75·2^31.
        assert_eq!(
            QuantizedMultiplier::new(0.75),
            QuantizedMultiplier {
                multiplier: 1_610_612_736,
                shift: 0
            }
        );
        assert_eq!(
            QuantizedMultiplier::new(0.0),
            QuantizedMultiplier {
                multiplier: 0,
                shift: 0
            }
        );
        // 3.0 = 0.75·2^2.
        assert_eq!(QuantizedMultiplier::new(3.0).shift, 2);
        // A fraction that rounds up to 2^31 renormalises.
        let m = QuantizedMultiplier::new(0.999_999_999_9);
        assert_eq!((m.multiplier, m.shift), (1 << 30, 1));
        // x · 0.5 with the multiplier 2^30 (shift 0): ties round upward in the doubling high
        // multiply (3.5 → 4, −3.5 → −3).
        let half = QuantizedMultiplier::new(0.5);
        assert_eq!(half.apply(7), 4);
        assert_eq!(half.apply(-7), -3);
        for &(x, real) in &[(1000, 0.0123), (-777, 0.5), (123_456, 1.7), (5, 3e-5)] {
            let got = QuantizedMultiplier::new(real).apply(x) as f64;
            assert!((got - x as f64 * real).abs() <= 1.0, "{x}·{real}: {got}");
        }
        let (f, e) = frexp(10.0);
        assert_eq!((f, e), (0.625, 4));
        let (f, e) = frexp(f64::MIN_POSITIVE / 4.0);
        assert!((f * 2f64.powi(e) - f64::MIN_POSITIVE / 4.0).abs() < 1e-320);
    }
}
