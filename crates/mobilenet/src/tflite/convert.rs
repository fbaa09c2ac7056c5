//! Matching a TFLite graph against the MobileNet v1 layer table, and converting its weights
//! (float, or dequantized `scale·(q − zero_point)`) into our model file.

use std::collections::BTreeMap;
use std::path::Path;

use super::export::PREPROCESSING_METADATA;
use super::{ElementType, FusedActivation, Graph, OpKind, TensorInfo, TfPadding, TfliteError};
use crate::config::{Activation, MobileNetConfig, Padding, Stem, Variant};
use crate::layers::LayerKind;
use crate::preprocess::{PixelNorm, Preprocessing};
use crate::weights::{names, ModelFile, Tensor};

/// The tensors of one convolution of the graph: input, weights, bias, output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTensors {
    /// Input activation.
    pub input: usize,
    /// Weights (OHWI for convolutions, 1HWC for depthwise, `[classes, cin]` for FC).
    pub weights: usize,
    /// Bias, if present.
    pub bias: Option<usize>,
    /// Output activation.
    pub output: usize,
}

/// (before, after) padding of the height and width dimensions of a PAD.
type HwPad = [(usize, usize); 2];

/// A TFLite graph recognised as MobileNet v1.
#[derive(Clone, Debug, PartialEq)]
pub struct MobileNetGraph {
    /// The configuration it matches (classes `None` for a feature extractor).
    pub config: MobileNetConfig,
    /// Tensors of each layer of `config.layers()` that has weights, in order (the pool has none).
    pub layers: Vec<ConvTensors>,
    /// The graph's input tensor.
    pub input: usize,
    /// The average pool's output (the features).
    pub pooled: usize,
    /// Whether the graph ends with a softmax.
    pub softmax: bool,
    /// The graph's output tensor.
    pub output: usize,
}

fn conv(
    op: &super::OpInfo,
    n: usize,
    bad: &dyn Fn(String) -> TfliteError,
) -> Result<ConvTensors, TfliteError> {
    let get = |i: usize| op.inputs.get(i).copied().flatten();
    Ok(ConvTensors {
        input: get(0).ok_or_else(|| bad(format!("operator {n} has no input")))?,
        weights: get(1).ok_or_else(|| bad(format!("operator {n} has no weights")))?,
        bias: get(2),
        output: *op
            .outputs
            .first()
            .ok_or_else(|| bad(format!("operator {n} has no output")))?,
    })
}

impl MobileNetGraph {
    /// Recognises `graph` as MobileNet v1: stem conv, depthwise + pointwise pairs, global average
    /// pool, then a classifier (1×1 conv or reshape + fully connected, optionally softmax) or
    /// nothing (a feature extractor). Anything else is refused with the reason.
    pub fn from_graph(graph: &Graph, path: &Path) -> Result<MobileNetGraph, TfliteError> {
        let bad = |reason: String| TfliteError {
            path: path.to_path_buf(),
            reason: format!("not a MobileNet v1 graph: {reason}"),
        };
        let t = |i: usize| &graph.tensors[i];
        let input = *graph
            .inputs
            .first()
            .ok_or_else(|| bad("no graph input".into()))?;
        let [n, h, w, c] = t(input).shape[..] else {
            return Err(bad(format!("input shape {:?} is not NHWC", t(input).shape)));
        };
        if n != 1 || h != w || c != 3 {
            return Err(bad(format!(
                "input shape {:?} is not [1, R, R, 3]",
                t(input).shape
            )));
        }
        // PAD + VALID convolutions (how symmetric padding is written) are matched as one
        // convolution; `pads[n]` records, per 3×3 layer, its explicit padding if any.
        let ops: Vec<&super::OpInfo> = graph.ops.iter().collect();
        let mut layers = Vec::new();
        let mut acts = Vec::new();
        let mut strides = Vec::new();
        let mut pads: Vec<(usize, Option<HwPad>)> = Vec::new();
        // The operator at `i`, seen through a PAD in front of it: (pad, index of the conv).
        let through_pad = |i: usize| -> Result<(Option<HwPad>, usize), TfliteError> {
            match ops.get(i).map(|o| &o.kind) {
                Some(OpKind::Pad { paddings }) => {
                    if paddings[0] != (0, 0) || paddings[3] != (0, 0) {
                        return Err(bad(format!(
                            "operator {i} pads the batch or channel dimension ({paddings:?})"
                        )));
                    }
                    let valid = matches!(
                        ops.get(i + 1).map(|o| &o.kind),
                        Some(OpKind::Conv2d {
                            padding: TfPadding::Valid,
                            ..
                        }) | Some(OpKind::Depthwise {
                            padding: TfPadding::Valid,
                            ..
                        })
                    );
                    if !valid {
                        return Err(bad(format!(
                            "operator {i} (PAD) is not followed by a VALID convolution"
                        )));
                    }
                    Ok((Some([paddings[1], paddings[2]]), i + 1))
                }
                _ => Ok((None, i)),
            }
        };
        let (stem_pad, s0) = through_pad(0)?;
        let stem_stride = match ops.get(s0).map(|o| &o.kind) {
            Some(OpKind::Conv2d {
                stride,
                padding,
                activation,
            }) if stride.0 == stride.1 && (*padding == TfPadding::Same) == stem_pad.is_none() => {
                layers.push(conv(ops[s0], s0, &bad)?);
                acts.push(*activation);
                pads.push((stride.0, stem_pad));
                stride.0
            }
            other => {
                return Err(bad(format!(
                    "the first operator is {other:?}, expected a 3×3 CONV_2D with SAME padding"
                )))
            }
        };
        let mut i = s0 + 1;
        loop {
            let (pad, d) = through_pad(i)?;
            let (Some(a), Some(b)) = (ops.get(d), ops.get(d + 1)) else {
                break;
            };
            match (&a.kind, &b.kind) {
                (
                    OpKind::Depthwise {
                        stride,
                        padding,
                        activation: da,
                        multiplier: 1,
                    },
                    OpKind::Conv2d {
                        stride: (1, 1),
                        padding: TfPadding::Same,
                        activation: pa,
                    },
                ) if stride.0 == stride.1
                    && (*padding == TfPadding::Same) == pad.is_none()
                    && !matches!(pa, FusedActivation::None) =>
                {
                    let pw = conv(b, d + 1, &bad)?;
                    if t(pw.weights).shape.get(1..3) != Some(&[1, 1]) {
                        break;
                    }
                    layers.push(conv(a, d, &bad)?);
                    layers.push(pw);
                    acts.extend([*da, *pa]);
                    strides.push(stride.0);
                    pads.push((stride.0, pad));
                    i = d + 2;
                }
                _ => break,
            }
        }
        let pairs = strides.len();
        let variant = match pairs {
            13 => Variant::Standard,
            8 => Variant::Shallow,
            other => {
                return Err(bad(format!(
                "{other} depthwise-separable blocks, expected 13 (or 8 for the shallow variant)"
            )))
            }
        };
        let activation = match acts.iter().all(|a| *a == acts[0]).then_some(acts[0]) {
            Some(FusedActivation::Relu6) => Activation::Relu6,
            Some(FusedActivation::Relu) => Activation::Relu,
            _ => {
                return Err(bad(format!(
                    "activations {acts:?}: expected ReLU6 or ReLU throughout"
                )))
            }
        };
        let last = layers.last().map(|l| l.output).unwrap_or(input);
        let width = *t(last).shape.last().unwrap_or(&0);
        let feature_hw = (
            t(last).shape.get(1).copied().unwrap_or(0),
            t(last).shape.get(2).copied().unwrap_or(0),
        );
        // α: the two-decimal value that reproduces the last width (as for TF-slim weights).
        let exact = width as f64 / 1024.0;
        let rounded = (exact * 100.0).round() / 100.0;
        let alpha = if rounded > 0.0 && (1024.0 * rounded) as usize == width {
            rounded
        } else {
            exact
        };
        let stem = match stem_stride {
            2 => Stem::Standard,
            1 => Stem::SmallInput,
            s => return Err(bad(format!("stem stride {s}"))),
        };
        // Explicit pads must all be the symmetric convention's one pixel per side; then every
        // SAME layer must coincide with it (stride 1, or an odd input at stride 2).
        let symmetric = pads.iter().any(|(_, p)| p.is_some());
        if symmetric {
            let table = MobileNetConfig::new(alpha, h)
                .map_err(|e| bad(e.to_string()))?
                .with_variant(variant)
                .with_stem(match stem_stride {
                    1 => Stem::SmallInput,
                    _ => Stem::Standard,
                })
                .layers();
            let three: Vec<_> = table.iter().filter(|l| l.kernel == 3).collect();
            for ((stride, pad), l) in pads.iter().zip(three) {
                let ok = match pad {
                    Some(p) => *p == [(1, 1), (1, 1)],
                    None => {
                        let g = mobilenet_kernels::ConvGeometry::tf_same(
                            l.input[0], l.input[1], 3, *stride,
                        );
                        (g.pad_top, g.pad_left) == (1, 1) || *stride == 1
                    }
                };
                if !ok {
                    return Err(bad(format!(
                        "layer {} pads {pad:?}: only TF SAME padding or one pixel on every side is supported",
                        l.name
                    )));
                }
            }
        }
        let mut config = MobileNetConfig::new(alpha, h)
            .map_err(|e| bad(e.to_string()))?
            .with_activation(activation)
            .with_padding(if symmetric {
                Padding::Symmetric
            } else {
                Padding::TfSame
            })
            .with_variant(variant)
            .with_stem(stem)
            .without_head();
        // Average pool over the whole final map.
        let pool = ops
            .get(i)
            .ok_or_else(|| bad("the graph ends before the average pool".into()))?;
        match &pool.kind {
            OpKind::AvgPool {
                filter,
                padding: TfPadding::Valid,
                ..
            } if *filter == feature_hw => {}
            other => {
                return Err(bad(format!(
                "operator {i} is {other:?}, expected a global AVERAGE_POOL_2D over {feature_hw:?}"
            )))
            }
        }
        let pooled = *pool
            .outputs
            .first()
            .ok_or_else(|| bad("the pool has no output".into()))?;
        i += 1;
        // Classifier: 1×1 conv, or reshape + fully connected; then reshape and softmax, optional.
        let mut output = pooled;
        let mut softmax = false;
        for (n, op) in ops.iter().enumerate().skip(i) {
            match &op.kind {
                OpKind::Conv2d {
                    stride: (1, 1),
                    activation: FusedActivation::None,
                    ..
                }
                | OpKind::FullyConnected {
                    activation: FusedActivation::None,
                } if config.classes().is_none() => {
                    let fc = conv(op, n, &bad)?;
                    let classes = t(fc.weights).shape.first().copied().unwrap_or(0);
                    config = config
                        .with_classes(classes)
                        .map_err(|e| bad(e.to_string()))?;
                    layers.push(fc);
                    output = fc.output;
                }
                OpKind::Reshape => output = *op.outputs.first().unwrap_or(&output),
                OpKind::Pad { .. } => {
                    return Err(bad(format!(
                        "operator {n} (PAD) does not belong after the average pool"
                    )))
                }
                OpKind::Softmax { beta } if *beta == 1.0 && n + 1 == ops.len() => {
                    softmax = true;
                    output = *op.outputs.first().unwrap_or(&output);
                }
                other => {
                    return Err(bad(format!(
                        "operator {n} ({other:?}) does not belong after the average pool"
                    )))
                }
            }
        }
        // Every stride and channel count must be the layer table's for this configuration.
        let table: Vec<_> = config
            .layers()
            .into_iter()
            .filter(|l| l.kind != LayerKind::AvgPool)
            .collect();
        if table.len() != layers.len() {
            return Err(bad(format!(
                "{} weighted layers, the layer table has {}",
                layers.len(),
                table.len()
            )));
        }
        for (l, ct) in table.iter().zip(&layers) {
            let out = &t(ct.output).shape;
            if out.last() != Some(&l.output[2])
                || (l.kind != LayerKind::Fc && out.get(1) != Some(&l.output[0]))
            {
                return Err(bad(format!(
                    "layer {} outputs {out:?}, the layer table says {:?}",
                    l.name, l.output
                )));
            }
        }
        Ok(MobileNetGraph {
            config,
            layers,
            input,
            pooled,
            softmax,
            output,
        })
    }

    /// Our model file: float weights, or dequantized ones (`scale·(q − zero_point)`), with the
    /// bias of each layer and an identity batch norm (ε 0), and the input quantization turned
    /// into the pixel normalisation. For quantized files the result is the float model the
    /// quantized one approximates (same top-1 on the reference images), not a bit-exact copy.
    pub fn to_model_file(&self, graph: &Graph, path: &Path) -> Result<ModelFile, TfliteError> {
        let bad = |reason: String| TfliteError {
            path: path.to_path_buf(),
            reason,
        };
        let mut tensors = BTreeMap::new();
        let table: Vec<_> = self
            .config
            .layers()
            .into_iter()
            .filter(|l| l.kind != LayerKind::AvgPool)
            .collect();
        for (l, ct) in table.iter().zip(&self.layers) {
            let w = &graph.tensors[ct.weights];
            let v = dequantize(w).map_err(|r| bad(format!("tensor {:?}: {r}", w.name)))?;
            let [cin, cout] = [l.input[2], l.output[2]];
            let want = match l.kind {
                LayerKind::Conv => l.kernel * l.kernel * cin * cout,
                LayerKind::Depthwise => 9 * cin,
                _ => cin * cout,
            };
            if v.len() != want {
                return Err(bad(format!(
                    "tensor {:?} has {} values, layer {} needs {want}",
                    w.name,
                    v.len(),
                    l.name
                )));
            }
            let (name, shape, data) = match l.kind {
                // OHWI → HWIO.
                LayerKind::Conv => {
                    let k = l.kernel;
                    let mut out = vec![0.0; v.len()];
                    for o in 0..cout {
                        for y in 0..k {
                            for x in 0..k {
                                for i in 0..cin {
                                    out[((y * k + x) * cin + i) * cout + o] =
                                        v[((o * k + y) * k + x) * cin + i];
                                }
                            }
                        }
                    }
                    (names::weight(&l.name), vec![k, k, cin, cout], out)
                }
                // 1HWC → HWC.
                LayerKind::Depthwise => (names::weight(&l.name), vec![3, 3, cin], v),
                // O11I / [O, I] → [I, O].
                LayerKind::Pointwise | LayerKind::Fc => {
                    let mut out = vec![0.0; v.len()];
                    for o in 0..cout {
                        for i in 0..cin {
                            out[i * cout + o] = v[o * cin + i];
                        }
                    }
                    // The classifier's layer is `fc`: its weight is `fc/weight`.
                    (names::weight(&l.name), vec![cin, cout], out)
                }
                LayerKind::AvgPool => continue,
            };
            if data.len() != shape.iter().product::<usize>() {
                return Err(bad(format!(
                    "tensor {:?} has {} values, layer {} needs {shape:?}",
                    w.name,
                    data.len(),
                    l.name
                )));
            }
            tensors.insert(name, Tensor::new(shape, data));
            let bias = match ct.bias {
                Some(b) => bias_values(&graph.tensors[b], &graph.tensors[ct.input], w)
                    .map_err(|r| bad(format!("bias of layer {}: {r}", l.name)))?,
                None => vec![0.0; cout],
            };
            if bias.len() != cout {
                return Err(bad(format!(
                    "layer {} has {} bias values for {cout} channels",
                    l.name,
                    bias.len()
                )));
            }
            if l.kind == LayerKind::Fc {
                tensors.insert(names::FC_BIAS.into(), Tensor::new(vec![cout], bias));
            } else {
                crate::weights::insert_folded_bias(&mut tensors, &l.name, bias);
            }
        }
        let norm = match &graph.tensors[self.input].quantization {
            Some(q) if graph.tensors[self.input].kind != ElementType::F32 => {
                // real = s·(q − z) with q the 8-bit pixel (uint8, or int8 = pixel − 128).
                let offset = if graph.tensors[self.input].kind == ElementType::I8 {
                    128.0
                } else {
                    0.0
                };
                let (s, z) = (q.scale[0], q.zero_point[0] as f32 + offset);
                PixelNorm::MeanStd {
                    mean: [z / 255.0; 3],
                    std: [1.0 / (255.0 * s); 3],
                }
            }
            // Float files do not record their normalisation; the known MobileNet v1 float
            // files here are the VWW detector (x/255).
            _ => PixelNorm::Unit,
        };
        let mut pre = Preprocessing { crop: 1.0, norm };
        // Files this crate writes (`export`, `quantize`) record the preprocessing and labels.
        if let Some(d) = graph.metadata_entry(PREPROCESSING_METADATA) {
            let p: Preprocessing = serde_json::from_slice(d)
                .map_err(|e| bad(format!("the preprocessing metadata does not parse: {e}")))?;
            pre.crop = p.crop;
            if graph.tensors[self.input].kind == ElementType::F32 {
                pre.norm = p.norm;
            }
        }
        let labels = graph.labels().map_err(bad)?;
        ModelFile::new(self.config, 0.0, pre, labels, tensors, path).map_err(|e| bad(e.to_string()))
    }
}

/// A constant tensor as f32: float as is, 8-bit dequantized (per tensor or per channel of
/// axis 0, the output channel of TFLite weights, or axis 3 of depthwise weights).
fn dequantize(t: &TensorInfo) -> Result<Vec<f32>, String> {
    match t.kind {
        ElementType::F32 => Ok(t
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        ElementType::U8 | ElementType::I8 => {
            let q = t
                .quantization
                .as_ref()
                .ok_or("8-bit weights without quantization parameters")?;
            let values: Vec<i32> = if t.kind == ElementType::U8 {
                t.data.iter().map(|&b| b as i32).collect()
            } else {
                t.data.iter().map(|&b| b as i8 as i32).collect()
            };
            let channels = q.scale.len();
            if channels == 1 {
                let (s, z) = (q.scale[0], q.zero_point[0] as i32);
                return Ok(values.iter().map(|&v| s * (v - z) as f32).collect());
            }
            let dims = &t.shape;
            let axis = q.axis;
            if axis >= dims.len() || dims[axis] != channels {
                return Err(format!(
                    "{channels} scales do not match axis {axis} of shape {dims:?}"
                ));
            }
            let inner: usize = dims[axis + 1..].iter().product();
            Ok(values
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ch = (i / inner) % channels;
                    q.scale[ch] * (v - q.zero_point[ch] as i32) as f32
                })
                .collect())
        }
        other => Err(format!("type {other:?} is not a weight type")),
    }
}

/// Bias values as f32: float as is, int32 with scale `s_input · s_weight` (per channel).
fn bias_values(
    b: &TensorInfo,
    input: &TensorInfo,
    weights: &TensorInfo,
) -> Result<Vec<f32>, String> {
    match b.kind {
        ElementType::F32 => dequantize(b),
        ElementType::I32 => {
            let raw: Vec<i32> = b
                .data
                .chunks_exact(4)
                .map(|x| i32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                .collect();
            let s_in = input
                .quantization
                .as_ref()
                .ok_or("quantized bias on a float input")?
                .scale[0];
            let ws = &weights
                .quantization
                .as_ref()
                .ok_or("quantized bias with float weights")?
                .scale;
            Ok(raw
                .iter()
                .enumerate()
                .map(|(i, &v)| v as f32 * s_in * ws[if ws.len() == 1 { 0 } else { i % ws.len() }])
                .collect())
        }
        other => Err(format!("type {other:?} is not a bias type")),
    }
}
