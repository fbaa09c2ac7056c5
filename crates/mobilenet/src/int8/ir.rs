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

pub use super::multiplier::QuantizedMultiplier;
use crate::layers::{Layer, LayerKind};
use crate::tflite::{
    ConvTensors, ElementType, FusedActivation, Graph, MobileNetGraph, OpKind, TfPadding,
    TfliteError,
};

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
    /// The same scales as XNNPACK derives them, `s_in·s_w / s_out` in single precision, per
    /// output channel: what its "fp32" requantization multiplies by.
    pub scales: Vec<f32>,
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

/// A 1×1 convolution reading the output of op `after` rather than continuing the chain: a
/// detector's box or class predictor. Its output is one of the model's outputs.
#[derive(Clone, Debug)]
pub(crate) struct QHead {
    pub after: usize,
    pub conv: QConv,
    /// Output quantization `(scale, zero point)`.
    pub output: (f32, i32),
}

/// A quantized MobileNet ready to run with integer arithmetic.
#[derive(Clone, Debug)]
pub struct QuantModel {
    pub(crate) ops: Vec<QOp>,
    /// Predictors reading intermediate outputs (a detector's; none for a classifier).
    pub(crate) heads: Vec<QHead>,
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

/// Sizes of one convolution: channels, kernel side, input and output grids.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvShape {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub in_hw: (usize, usize),
    pub out_hw: (usize, usize),
}

impl ConvShape {
    /// The shape of a layer of the table.
    pub fn of(l: &Layer) -> ConvShape {
        ConvShape {
            cin: l.input[2],
            cout: l.output[2],
            k: if l.kind == LayerKind::Pointwise || l.kind == LayerKind::Fc {
                1
            } else {
                3
            },
            in_hw: (l.input[0], l.input[1]),
            out_hw: (l.output[0], l.output[1]),
        }
    }
}

/// Converts the operators of one quantized graph into the IR, checking every tensor it reads.
pub(crate) struct Reader<'g> {
    pub graph: &'g Graph,
    path: &'g Path,
    /// The activations' type (the input's).
    pub kind: ElementType,
}

impl<'g> Reader<'g> {
    /// A reader for `graph`, whose input must be uint8 or int8.
    pub fn new(graph: &'g Graph, input: usize, path: &'g Path) -> Result<Reader<'g>, TfliteError> {
        let kind = graph.tensors[input].kind;
        let reader = Reader { graph, path, kind };
        if kind != ElementType::U8 && kind != ElementType::I8 {
            return Err(reader.bad(format!(
                "input is {kind:?}: the integer engine runs uint8 or int8 graphs"
            )));
        }
        Ok(reader)
    }

    pub fn bad(&self, reason: String) -> TfliteError {
        TfliteError {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn t(&self, i: usize) -> &'g crate::tflite::TensorInfo {
        &self.graph.tensors[i]
    }

    /// A quantized tensor's scales and zero points, checked as TFLite checks them: positive
    /// finite scales, zero points inside the type.
    pub fn quant(&self, i: usize) -> Result<(Vec<f32>, Vec<i64>), TfliteError> {
        let t = self.t(i);
        let qp = t
            .quantization
            .as_ref()
            .ok_or_else(|| self.bad(format!("tensor {:?} is not quantized", t.name)))?;
        if qp.scale.is_empty() {
            return Err(self.bad(format!("tensor {:?} has no quantization scale", t.name)));
        }
        if let Some(s) = qp.scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(self.bad(format!("tensor {:?} has scale {s}", t.name)));
        }
        let range = match t.kind {
            ElementType::U8 => 0..=255,
            ElementType::I8 => -128..=127,
            _ => 0..=0,
        };
        if let Some(z) = qp.zero_point.iter().find(|z| !range.contains(*z)) {
            return Err(self.bad(format!(
                "tensor {:?} ({:?}) has zero point {z}",
                t.name, t.kind
            )));
        }
        Ok((qp.scale.clone(), qp.zero_point.clone()))
    }

    /// `(scale, zero point)` of a per-tensor quantized activation.
    pub fn activation(&self, i: usize) -> Result<(f32, i32), TfliteError> {
        let (s, z) = self.quant(i)?;
        Ok((s[0], z[0] as i32))
    }

    fn ints(&self, i: usize) -> Vec<i32> {
        let t = self.t(i);
        match t.kind {
            ElementType::U8 => t.data.iter().map(|&b| b as i32).collect(),
            ElementType::I8 => t.data.iter().map(|&b| b as i8 as i32).collect(),
            _ => t
                .data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        }
    }

    /// A convolution or depthwise operator `op` with tensors `ct` as layer `name` of shape
    /// `shape`; `pad` is the (top, left) of a PAD in front of it.
    pub fn conv(
        &self,
        op: &OpKind,
        ct: ConvTensors,
        name: &str,
        shape: ConvShape,
        pad: Option<(usize, usize)>,
    ) -> Result<QConv, TfliteError> {
        let (activation, padding, stride, depthwise) = match op {
            OpKind::Conv2d {
                activation,
                padding,
                stride,
            } => (activation, padding, stride, false),
            OpKind::Depthwise {
                activation,
                padding,
                stride,
                ..
            } => (activation, padding, stride, true),
            other => return Err(self.bad(format!("layer {name}: {other:?} is no convolution"))),
        };
        let (qmin, qmax) = qrange(self.kind);
        let (in_s, in_z) = self.quant(ct.input)?;
        let (w_s, w_z) = self.quant(ct.weights)?;
        let (out_s, out_z) = self.quant(ct.output)?;
        let ConvShape {
            cin,
            cout,
            k,
            in_hw: (ih, iw),
            out_hw: (oh, ow),
        } = shape;
        let raw = self.ints(ct.weights);
        let per_channel = w_s.len() > 1;
        let want = if depthwise {
            9 * cout
        } else {
            k * k * cin * cout
        };
        check_lengths(
            &|r| self.bad(r),
            name,
            raw.len(),
            want,
            w_s.len(),
            cout,
            ct.bias.map(|b| self.ints(b).len()),
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
            Some(b) => self.ints(b),
            None => vec![0; cout],
        };
        let multipliers = (0..cout)
            .map(|ch| {
                let ws = w_s[if per_channel { ch } else { 0 }];
                QuantizedMultiplier::new(effective_scale(
                    in_s[0],
                    ws,
                    out_s[0],
                    self.kind == ElementType::U8,
                ))
            })
            .collect();
        let scales = (0..cout)
            .map(|ch| in_s[0] * w_s[if per_channel { ch } else { 0 }] / out_s[0])
            .collect();
        let output_zp = out_z[0] as i32;
        let act = activation_range(activation, out_s[0], output_zp, qmin, qmax);
        let (pad_top, pad_left) = match (pad, padding) {
            (Some(p), _) => p,
            (None, TfPadding::Same) => {
                let total = |o: usize, i: usize, s: usize| ((o - 1) * s + k).saturating_sub(i);
                (total(oh, ih, stride.0) / 2, total(ow, iw, stride.1) / 2)
            }
            (None, TfPadding::Valid) => (0, 0),
        };
        Ok(QConv {
            depthwise,
            weights,
            weight_zp: w_z.iter().map(|&z| z as i32).collect(),
            weight_signed: self.t(ct.weights).kind == ElementType::I8,
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
            scales,
            output_zp,
            act,
        })
    }
}

impl QuantModel {
    /// Plans the integer execution of a quantized MobileNet graph.
    pub fn new(
        graph: &Graph,
        net: &MobileNetGraph,
        path: &Path,
    ) -> Result<QuantModel, TfliteError> {
        let r = Reader::new(graph, net.input, path)?;
        let bad = |reason: String| r.bad(reason);
        let kind = r.kind;
        let (qmin, qmax) = qrange(kind);
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
                OpKind::Conv2d { .. } | OpKind::Depthwise { .. } => {
                    let (l, ct) = layer_iter
                        .next()
                        .ok_or_else(|| bad("more convolutions than layers".into()))?;
                    let conv = r.conv(
                        &op.kind,
                        *ct,
                        l.name.as_str(),
                        ConvShape::of(l),
                        pending_pad.take(),
                    )?;
                    ops.push(QOp::Conv(conv));
                }
                OpKind::FullyConnected { activation } => {
                    let (l, ct) = layer_iter
                        .next()
                        .ok_or_else(|| bad("more layers than the table".into()))?;
                    let (in_s, in_z) = r.quant(ct.input)?;
                    let (w_s, w_z) = r.quant(ct.weights)?;
                    let (out_s, out_z) = r.quant(ct.output)?;
                    let (cin, cout) = (l.input[2], l.output[2]);
                    check_lengths(
                        &bad,
                        "fc",
                        r.ints(ct.weights).len(),
                        cin * cout,
                        w_s.len().min(1),
                        cout,
                        ct.bias.map(|b| r.ints(b).len()),
                    )?;
                    let weights = r
                        .ints(ct.weights)
                        .iter()
                        .map(|&w| w - w_z[0] as i32)
                        .collect();
                    let bias = ct.bias.map_or(vec![0; cout], |b| r.ints(b));
                    let m =
                        QuantizedMultiplier::new(effective_scale(in_s[0], w_s[0], out_s[0], true));
                    ops.push(QOp::Conv(QConv {
                        depthwise: false,
                        weights,
                        weight_zp: vec![w_z[0] as i32],
                        weight_signed: graph.tensors[ct.weights].kind == ElementType::I8,
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
                        scales: vec![in_s[0] * w_s[0] / out_s[0]; cout],
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
                    let (in_s, _) = r.quant(input)?;
                    let output = *op
                        .outputs
                        .first()
                        .ok_or_else(|| bad("softmax without output".into()))?;
                    let (out_s, out_z) = r.quant(output)?;
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
        let res = net.config.resolution();
        Ok(QuantModel {
            ops,
            heads: Vec::new(),
            kind,
            input: r.activation(net.input)?,
            output: r.activation(net.output)?,
            input_len: res * res * 3,
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
