//! A quantized `.tflite` MobileNet v1 (ours from `quantize`, or Google's uint8 files) as an
//! ONNX graph in QDQ form: every quantized tensor of the TFLite graph becomes a
//! `QuantizeLinear` → `DequantizeLinear` pair with its scale and zero point; weights are int8 or
//! uint8 initializers (OIHW; per-channel scales on axis 0 where the `.tflite` has them) behind a
//! `DequantizeLinear`, biases int32 ones with scale `s_in·s_w` and zero point 0. ONNX Runtime
//! fuses each `DequantizeLinear` → `Conv` → `QuantizeLinear` group into an integer convolution
//! (QLinearConv), the way it runs the QDQ files its own quantizer writes.
//!
//! The fused activations become `Clip(0, 6)` or `Relu` between the convolution and its
//! `QuantizeLinear`; TFLite's PAD and SAME padding become the convolution's pads. The graph
//! ends at the classifier's dequantized logits (`[1, classes]`), as the float export does: a
//! trailing softmax is left out. The input is float — the normalised image, as in the float
//! export — and is quantized by the graph's first `QuantizeLinear` with the `.tflite`'s input
//! quantization, so the pixels land on the very integers the `.tflite` takes.
//!
//! ONNX Runtime requantizes with a float multiplier and rounds half to even; TFLite (and our
//! integer engine) with a Q31 fixed-point multiplier and rounding half away from zero. The
//! two disagree by one step on a few activations, so the logits agree to a few quantization
//! steps, not bit for bit.

use std::path::Path;

use super::export::{pads, Attr, GraphBuilder, INT32, INT8, UINT8};
use super::Layout;
use crate::classifier::Classifier;
use crate::int8::QuantizedModel;
use crate::layers::LayerKind;
use crate::tflite::{ElementType, ExportError, FusedActivation, Graph, OpKind, TfPadding};

/// `graph` (a quantized MobileNet v1 `.tflite`) as a QDQ ONNX model with input `layout`;
/// `labels` replace the file's own, if any.
///
/// # Errors
///
/// A graph that is not a quantized MobileNet v1 our integer engine runs, or that holds an
/// operator this export does not write.
pub fn export_qdq(
    graph: &Graph,
    path: &Path,
    layout: Layout,
    labels: Option<&[String]>,
) -> Result<Vec<u8>, ExportError> {
    // What the integer engine accepts is what this writes: the same checks of scales, zero
    // points and sizes, the same match of the graph against the layer table, and the labels and
    // preprocessing it reports.
    let model = QuantizedModel::from_graph(graph, path).map_err(|e| ExportError(e.to_string()))?;
    let net = model.graph();
    let mut w = Writer {
        g: GraphBuilder::default(),
        graph,
    };
    let config = &net.config;
    let (input_dims, input) = w.g.input(layout, config.resolution());
    let mut cur = w.qdq("input", &input, net.input)?;
    let table: Vec<_> = config
        .layers()
        .into_iter()
        .filter(|l| l.kind != LayerKind::AvgPool)
        .collect();
    let mut layers = table.iter().zip(&net.layers);
    let mut pending_pad: Option<[usize; 4]> = None;
    let mut logits = None;
    for op in &graph.ops {
        let mut next = |what: &str| {
            layers
                .next()
                .ok_or_else(|| ExportError(format!("the graph has more {what} than layers")))
        };
        match &op.kind {
            OpKind::Pad { paddings } => {
                let [(t, b), (l, r)] = [paddings[1], paddings[2]];
                pending_pad = Some([t, l, b, r]);
            }
            OpKind::Conv2d {
                stride,
                padding,
                activation,
            }
            | OpKind::Depthwise {
                stride,
                padding,
                activation,
                ..
            } => {
                let (l, ct) = next("convolutions")?;
                let depthwise = matches!(op.kind, OpKind::Depthwise { .. });
                let pads = match (pending_pad.take(), padding) {
                    (Some(p), _) => p,
                    (None, TfPadding::Same) => pads(l, crate::config::Padding::TfSame),
                    (None, TfPadding::Valid) => [0; 4],
                };
                let (cin, cout) = (l.input[2], l.output[2]);
                let k = if l.kind == LayerKind::Fc { 1 } else { l.kernel };
                // A classifier as a 1×1 convolution reads the pooled [1, C, 1, 1] map.
                let weights = w.weights(&l.name, ct.weights, cout, depthwise, (cin, k))?;
                let bias = w.bias(&l.name, ct.bias, ct.input, ct.weights, cout)?;
                let conv = format!("{}/conv", l.name);
                w.g.node(
                    "Conv",
                    &l.name,
                    &[&cur, &weights, &bias],
                    &conv,
                    &[
                        ("kernel_shape", Attr::Ints(vec![k as i64; 2])),
                        (
                            "strides",
                            Attr::Ints(vec![stride.0 as i64, stride.1 as i64]),
                        ),
                        ("pads", Attr::Ints(pads.map(|v| v as i64).to_vec())),
                        ("group", Attr::Int(if depthwise { cin as i64 } else { 1 })),
                    ],
                );
                let act = w.activation(&l.name, &conv, *activation)?;
                cur = w.qdq(&l.name, &act, ct.output)?;
                if l.kind == LayerKind::Fc {
                    logits = Some(cout);
                }
            }
            OpKind::FullyConnected { activation } => {
                let (l, ct) = next("fully connected layers")?;
                let (cin, cout) = (l.input[2], l.output[2]);
                let flat = format!("{}/flat", l.name);
                w.g.node("Flatten", &flat, &[&cur], &flat, &[("axis", Attr::Int(1))]);
                // Quantized again (exactly: the values are on the grid) so that the Gemm reads
                // a DequantizeLinear and ONNX Runtime runs it in integers too.
                let flat = w.qdq(&flat, &flat, ct.input)?;
                let weights = w.weights(&l.name, ct.weights, cout, false, (cin, 0))?;
                let bias = w.bias(&l.name, ct.bias, ct.input, ct.weights, cout)?;
                let gemm = format!("{}/gemm", l.name);
                w.g.node(
                    "Gemm",
                    &l.name,
                    &[&flat, &weights, &bias],
                    &gemm,
                    &[("transB", Attr::Int(1))],
                );
                let act = w.activation(&l.name, &gemm, *activation)?;
                cur = w.qdq(&l.name, &act, ct.output)?;
                logits = Some(cout);
            }
            OpKind::AvgPool { .. } => {
                let out = output(op, "average pool")?;
                w.g.node("GlobalAveragePool", "avgpool", &[&cur], "avgpool/pool", &[]);
                cur = w.qdq("avgpool", "avgpool/pool", out)?;
            }
            // The classifier's output is flattened below; the logits are the output.
            OpKind::Reshape | OpKind::Softmax { .. } => {}
        }
    }
    let width = match logits {
        Some(c) => c,
        None => config.feature_shape()[2],
    };
    w.g.node(
        "Flatten",
        "logits",
        &[&cur],
        "logits",
        &[("axis", Attr::Int(1))],
    );
    let info = model.info();
    if let Some(l) = labels.filter(|l| l.len() != width) {
        return Err(ExportError(format!(
            "{} labels for {width} outputs",
            l.len()
        )));
    }
    w.g.finish(
        &input_dims,
        ("logits", &[1, width]),
        labels.or(info.labels.as_deref()),
        &info.preprocessing,
    )
}

fn output(op: &crate::tflite::OpInfo, what: &str) -> Result<usize, ExportError> {
    op.outputs
        .first()
        .copied()
        .ok_or_else(|| ExportError(format!("the {what} has no output")))
}

struct Writer<'g> {
    g: GraphBuilder,
    graph: &'g Graph,
}

impl Writer<'_> {
    /// Scales, zero points and type of tensor `i`.
    fn quant(&self, i: usize) -> Result<(Vec<f32>, Vec<i64>, ElementType), ExportError> {
        let t = &self.graph.tensors[i];
        match &t.quantization {
            Some(q) if !q.scale.is_empty() && q.scale.len() == q.zero_point.len() => {
                Ok((q.scale.clone(), q.zero_point.clone(), t.kind))
            }
            _ => Err(ExportError(format!("tensor {:?} is not quantized", t.name))),
        }
    }

    /// Zero points as an initializer of the tensor's type.
    fn zero_points(&mut self, name: &str, zp: &[i64], kind: ElementType, dims: &[usize]) -> String {
        let (dtype, raw): (i64, Vec<u8>) = match kind {
            ElementType::I8 => (INT8, zp.iter().map(|&z| z as i8 as u8).collect()),
            _ => (UINT8, zp.iter().map(|&z| z as u8).collect()),
        };
        self.g.initializer_raw(name, dims, dtype, &raw)
    }

    /// `x` quantized with tensor `t`'s (per-tensor) parameters and dequantized: the value the
    /// next operator reads.
    fn qdq(&mut self, name: &str, x: &str, t: usize) -> Result<String, ExportError> {
        let (scale, zp, kind) = self.quant(t)?;
        let s = self
            .g
            .initializer(&format!("{name}/scale"), &[], &scale[..1]);
        let z = self.zero_points(&format!("{name}/zero_point"), &zp[..1], kind, &[]);
        let (q, dq) = (format!("{name}/quantized"), format!("{name}/output"));
        self.g.node("QuantizeLinear", &q, &[x, &s, &z], &q, &[]);
        self.g
            .node("DequantizeLinear", &dq, &[&q, &s, &z], &dq, &[]);
        Ok(dq)
    }

    /// Weight tensor `t` as OIHW (`[cout, cin]` for a fully connected layer: `k` 0) integers
    /// behind a `DequantizeLinear`. TFLite holds OHWI (convolutions, `[cout, cin]` dense) or
    /// 1HWC (depthwise).
    fn weights(
        &mut self,
        layer: &str,
        t: usize,
        cout: usize,
        depthwise: bool,
        (cin, k): (usize, usize),
    ) -> Result<String, ExportError> {
        let (scale, zp, kind) = self.quant(t)?;
        let data = &self.graph.tensors[t].data;
        let (dims, raw) = if k == 0 {
            (vec![cout, cin], data.clone())
        } else if depthwise {
            let mut o = vec![0u8; data.len()];
            for (n, &v) in data.iter().enumerate() {
                let (tap, c) = (n / cout, n % cout);
                o[c * k * k + tap] = v;
            }
            (vec![cout, 1, k, k], o)
        } else {
            let mut o = vec![0u8; data.len()];
            for (n, &v) in data.iter().enumerate() {
                let (co, rest) = (n / (k * k * cin), n % (k * k * cin));
                let (tap, ci) = (rest / cin, rest % cin);
                o[(co * cin + ci) * k * k + tap] = v;
            }
            (vec![cout, cin, k, k], o)
        };
        if raw.len() != dims.iter().product::<usize>() {
            return Err(ExportError(format!(
                "layer {layer}: {} weight bytes for a {dims:?} kernel",
                raw.len()
            )));
        }
        let dtype = if kind == ElementType::I8 { INT8 } else { UINT8 };
        let q = self
            .g
            .initializer_raw(&format!("{layer}/weights/quantized"), &dims, dtype, &raw);
        let per_channel = scale.len() > 1;
        let qdims: &[usize] = if per_channel { &[cout] } else { &[] };
        let s = self
            .g
            .initializer(&format!("{layer}/weights/scale"), qdims, &scale);
        let z = self.zero_points(&format!("{layer}/weights/zero_point"), &zp, kind, qdims);
        let out = format!("{layer}/weights");
        let axis = [("axis", Attr::Int(0))];
        let attrs: &[_] = if per_channel { &axis } else { &[] };
        self.g
            .node("DequantizeLinear", &out, &[&q, &s, &z], &out, attrs);
        Ok(out)
    }

    /// The int32 bias (zeros if the `.tflite` has none) behind a `DequantizeLinear` with scale
    /// `s_in·s_w` per channel, zero point 0: what the integer convolution adds.
    fn bias(
        &mut self,
        layer: &str,
        bias: Option<usize>,
        input: usize,
        weights: usize,
        cout: usize,
    ) -> Result<String, ExportError> {
        let (in_s, _, _) = self.quant(input)?;
        let (w_s, _, _) = self.quant(weights)?;
        let raw = match bias {
            Some(b) => self.graph.tensors[b].data.clone(),
            None => vec![0; 4 * cout],
        };
        if raw.len() != 4 * cout {
            return Err(ExportError(format!(
                "layer {layer}: {} bias bytes for {cout} int32 values",
                raw.len()
            )));
        }
        let q = self
            .g
            .initializer_raw(&format!("{layer}/bias/quantized"), &[cout], INT32, &raw);
        let scales: Vec<f32> = (0..cout)
            .map(|c| in_s[0] * w_s[if w_s.len() > 1 { c } else { 0 }])
            .collect();
        let s = self
            .g
            .initializer(&format!("{layer}/bias/scale"), &[cout], &scales);
        let z = self.g.initializer_raw(
            &format!("{layer}/bias/zero_point"),
            &[cout],
            INT32,
            &vec![0; 4 * cout],
        );
        let out = format!("{layer}/bias");
        self.g.node(
            "DequantizeLinear",
            &out,
            &[&q, &s, &z],
            &out,
            &[("axis", Attr::Int(0))],
        );
        Ok(out)
    }

    /// The fused activation after `x`.
    fn activation(
        &mut self,
        layer: &str,
        x: &str,
        act: FusedActivation,
    ) -> Result<String, ExportError> {
        let out = format!("{layer}/activation");
        match act {
            FusedActivation::None => return Ok(x.to_string()),
            FusedActivation::Relu => self.g.node("Relu", &out, &[x], &out, &[]),
            FusedActivation::Relu6 => {
                let lo = self
                    .g
                    .initializer(&format!("{layer}/relu6/min"), &[], &[0.0]);
                let hi = self
                    .g
                    .initializer(&format!("{layer}/relu6/max"), &[], &[6.0]);
                self.g.node("Clip", &out, &[x, &lo, &hi], &out, &[]);
            }
            FusedActivation::Other(code) => {
                return Err(ExportError(format!(
                    "layer {layer}: fused activation code {code} is not written"
                )))
            }
        }
        Ok(out)
    }
}
