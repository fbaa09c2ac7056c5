//! Reading a MobileNet v1 ONNX graph into a model file (see the module docs of [`super`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::proto::{bytes, ints, text, Fields, Value};
use crate::config::{Activation, MobileNetConfig, Padding};
use crate::error::ModelError;
use crate::layers::LayerKind;
use crate::preprocess::Preprocessing;
use crate::weights::{names, ModelFile, Tensor};

/// A float initializer.
struct Init {
    dims: Vec<usize>,
    values: Vec<f32>,
}

/// One node: its operator, inputs, first output, name and integer/float attributes.
#[derive(Default)]
struct Node {
    op: String,
    name: String,
    inputs: Vec<String>,
    output: String,
    ints: HashMap<String, Vec<i64>>,
    floats: HashMap<String, f32>,
}

#[derive(Default)]
struct Parsed {
    nodes: Vec<Node>,
    inits: HashMap<String, Init>,
    input: (String, Vec<i64>),
    metadata: HashMap<String, String>,
}

fn tensor(b: &[u8]) -> Result<(String, Init), String> {
    let (mut name, mut dims, mut kind, mut raw, mut floats) =
        (String::new(), Vec::new(), 0, None, Vec::new());
    for f in Fields::new(b) {
        match f? {
            (1, v) => dims.extend(ints(v)?),
            (2, Value::Varint(t)) => kind = t,
            (8, v) => name = text(v)?.to_string(),
            (9, v) => raw = Some(bytes(v)?),
            (4, Value::Fixed32(x)) => floats.push(f32::from_bits(x)),
            (4, Value::Bytes(p)) => floats.extend(
                p.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            _ => {}
        }
    }
    let dims: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("tensor {name:?}: dimension {d}")))
        .collect::<Result<_, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("tensor {name:?}: dimensions {dims:?} overflow"))?;
    if kind != 1 {
        // Only float weights matter; other initializers (shapes) are skipped by callers.
        return Ok((
            name,
            Init {
                dims,
                values: Vec::new(),
            },
        ));
    }
    let values: Vec<f32> = match raw {
        Some(r) => r
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        None => floats,
    };
    if values.len() != count {
        return Err(format!(
            "tensor {name:?}: {} values for dimensions {dims:?}",
            values.len()
        ));
    }
    Ok((name, Init { dims, values }))
}

fn node(b: &[u8]) -> Result<Node, String> {
    let mut n = Node::default();
    for f in Fields::new(b) {
        match f? {
            (1, v) => n.inputs.push(text(v)?.to_string()),
            (2, v) if n.output.is_empty() => n.output = text(v)?.to_string(),
            (3, v) => n.name = text(v)?.to_string(),
            (4, v) => n.op = text(v)?.to_string(),
            (5, v) => {
                let (mut key, mut is, mut fl) = (String::new(), Vec::new(), None);
                for a in Fields::new(bytes(v)?) {
                    match a? {
                        (1, v) => key = text(v)?.to_string(),
                        (2, Value::Fixed32(x)) => fl = Some(f32::from_bits(x)),
                        (3 | 8, v) => is.extend(ints(v)?),
                        _ => {}
                    }
                }
                if let Some(x) = fl {
                    n.floats.insert(key.clone(), x);
                }
                n.ints.insert(key, is);
            }
            _ => {}
        }
    }
    Ok(n)
}

/// The first input's name and dimensions (symbolic ones as −1).
fn input_info(b: &[u8]) -> Result<(String, Vec<i64>), String> {
    let (mut name, mut dims) = (String::new(), Vec::new());
    for f in Fields::new(b) {
        match f? {
            (1, v) => name = text(v)?.to_string(),
            (2, v) => {
                for t in Fields::new(bytes(v)?) {
                    let (1, tt) = t? else { continue };
                    for s in Fields::new(bytes(tt)?) {
                        let (2, shape) = s? else { continue };
                        for d in Fields::new(bytes(shape)?) {
                            let (1, dim) = d? else { continue };
                            let mut value = -1;
                            for x in Fields::new(bytes(dim)?) {
                                if let (1, Value::Varint(v)) = x? {
                                    value = v as i64;
                                }
                            }
                            dims.push(value);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok((name, dims))
}

fn parse(buf: &[u8]) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    let mut graph = None;
    for f in Fields::new(buf) {
        match f? {
            (7, v) => graph = Some(bytes(v)?),
            (14, v) => {
                let (mut k, mut val) = (String::new(), String::new());
                for e in Fields::new(bytes(v)?) {
                    match e? {
                        (1, v) => k = text(v)?.to_string(),
                        (2, v) => val = text(v)?.to_string(),
                        _ => {}
                    }
                }
                p.metadata.insert(k, val);
            }
            _ => {}
        }
    }
    let graph = graph.ok_or("not an ONNX model (no graph)")?;
    let mut inputs = Vec::new();
    for f in Fields::new(graph) {
        match f? {
            (1, v) => p.nodes.push(node(bytes(v)?)?),
            (5, v) => {
                let (name, init) = tensor(bytes(v)?)?;
                p.inits.insert(name, init);
            }
            (11, v) => inputs.push(input_info(bytes(v)?)?),
            _ => {}
        }
    }
    // Graph inputs may list the initializers too (IR < 4); the image is the one that is not.
    p.input = inputs
        .into_iter()
        .find(|(n, _)| !p.inits.contains_key(n))
        .ok_or("the graph has no input")?;
    Ok(p)
}

/// A convolution of the chain, in ONNX's layout.
struct Conv<'a> {
    node: &'a Node,
    w: &'a Init,
    bias: Option<&'a Init>,
    stride: usize,
    pads: Vec<i64>,
    group: usize,
    activation: Option<Activation>,
}

/// Reads `bytes` (an ONNX file named `path`) as a MobileNet v1 model file.
///
/// # Errors
///
/// A malformed file, or a graph that is not a MobileNet v1 of the supported shape: the message
/// names the node or tensor.
pub fn read_onnx(buf: &[u8], path: &Path) -> Result<ModelFile, ModelError> {
    let bad = |reason: String| ModelError::Metadata {
        path: path.to_path_buf(),
        reason,
    };
    let p = parse(buf).map_err(|e| bad(format!("malformed ONNX: {e}")))?;
    let (mut cur, in_dims) = (p.input.0.clone(), p.input.1.clone());
    let mut nhwc = false;
    let mut convs: Vec<Conv> = Vec::new();
    let mut pooled = false;
    let mut fc: Option<(&Init, &Init, bool, &Node)> = None;
    for n in &p.nodes {
        if n.inputs.first() != Some(&cur) {
            return Err(bad(format!(
                "node {:?} ({}) does not continue the chain from {cur:?}: not a plain MobileNet v1",
                n.name, n.op
            )));
        }
        let init = |i: usize| {
            let name = n.inputs.get(i).map_or("", String::as_str);
            let t = p.inits.get(name).ok_or_else(|| {
                bad(format!(
                    "node {:?}: input {i} ({name:?}) is not an initializer",
                    n.name
                ))
            })?;
            // Non-float initializers are read without their values.
            if t.values.len() != t.dims.iter().product::<usize>() {
                return Err(bad(format!(
                    "tensor {name:?} of node {:?}: not float32",
                    n.name
                )));
            }
            Ok(t)
        };
        match n.op.as_str() {
            "Transpose" if convs.is_empty() && n.ints.get("perm") == Some(&vec![0, 3, 1, 2]) => {
                nhwc = true
            }
            "Conv" if !pooled => {
                let w = init(1)?;
                let bias = if n.inputs.len() > 2 { Some(init(2)?) } else { None };
                let strides = n.ints.get("strides").cloned().unwrap_or(vec![1, 1]);
                if w.dims.len() != 4 || strides.len() != 2 || strides[0] != strides[1] {
                    return Err(bad(format!("node {:?}: not a 2-D convolution with equal strides", n.name)));
                }
                convs.push(Conv {
                    node: n,
                    w,
                    bias,
                    stride: strides[0] as usize,
                    pads: n.ints.get("pads").cloned().unwrap_or(vec![0; 4]),
                    group: n.ints.get("group").and_then(|g| g.first()).copied().unwrap_or(1) as usize,
                    activation: None,
                });
            }
            "Clip" | "Relu" => {
                let last = convs
                    .last_mut()
                    .filter(|c| c.activation.is_none())
                    .ok_or_else(|| bad(format!("node {:?}: an activation not after a convolution", n.name)))?;
                last.activation = Some(if n.op == "Relu" {
                    Activation::Relu
                } else {
                    let bound = |i: usize, attr: &str| {
                        n.inputs
                            .get(i)
                            .and_then(|name| p.inits.get(name))
                            .and_then(|t| t.values.first().copied())
                            .or_else(|| n.floats.get(attr).copied())
                    };
                    if (bound(1, "min"), bound(2, "max")) != (Some(0.0), Some(6.0)) {
                        return Err(bad(format!("node {:?}: a Clip other than ReLU6", n.name)));
                    }
                    Activation::Relu6
                });
            }
            "BatchNormalization" => {
                return Err(bad(format!(
                    "node {:?}: batch norm is not folded into the convolutions (export with folding, or run onnxsim)",
                    n.name
                )))
            }
            "GlobalAveragePool" | "AveragePool" if !pooled => pooled = true,
            "Flatten" | "Reshape" | "Squeeze" if pooled => {}
            "Gemm" if pooled && fc.is_none() => {
                let trans = n.ints.get("transB").and_then(|t| t.first()) == Some(&1);
                fc = Some((init(1)?, init(2)?, trans, n));
            }
            "Softmax" if fc.is_some() => {}
            "QuantizeLinear" | "DequantizeLinear" | "QLinearConv" | "ConvInteger" => {
                return Err(bad(format!(
                    "node {:?}: operator {}: a quantized ONNX graph; import reads float graphs \
                     (run or import the quantized .tflite it was exported from instead)",
                    n.name, n.op
                )))
            }
            other => {
                return Err(bad(format!(
                    "node {:?}: operator {other} where a MobileNet v1 has none",
                    n.name
                )))
            }
        }
        cur = n.output.clone();
    }
    let last = convs.last().ok_or_else(|| bad("no convolutions".into()))?;
    let res = match (nhwc, in_dims.as_slice()) {
        (false, [_, 3, h, w]) | (true, [_, h, w, 3]) if h == w && *h > 0 => *h as usize,
        _ => {
            return Err(bad(format!(
                "input {:?} of shape {in_dims:?}: expected a square RGB image ({})",
                p.input.0,
                if nhwc { "NHWC" } else { "NCHW" }
            )))
        }
    };
    let alpha = last.w.dims[0] as f64 / 1024.0;
    let activation = last
        .activation
        .ok_or_else(|| bad(format!("node {:?}: no activation after it", last.node.name)))?;
    let padding = match convs.iter().find(|c| c.stride == 2 && c.w.dims[2] == 3) {
        Some(c) if c.pads.first() == Some(&1) => Padding::Symmetric,
        _ => Padding::TfSame,
    };
    let mut config = MobileNetConfig::new(alpha, res)
        .map_err(|e| bad(format!("α {alpha} at {res}: {e}")))?
        .with_padding(padding)
        .with_activation(activation);
    if let Some((w, _, trans, n)) = fc {
        if w.dims.len() != 2 {
            return Err(bad(format!(
                "node {:?}: classifier weights of shape {:?}",
                n.name, w.dims
            )));
        }
        let classes = if trans { w.dims[0] } else { w.dims[1] };
        config = config
            .with_classes(classes)
            .map_err(|e| bad(format!("{classes} classes: {e}")))?;
    }
    let layers: Vec<_> = config
        .layers()
        .into_iter()
        .filter(|l| !matches!(l.kind, LayerKind::AvgPool | LayerKind::Fc))
        .collect();
    if layers.len() != convs.len() {
        return Err(bad(format!(
            "{} convolutions where MobileNet v1 α {alpha} has {}",
            convs.len(),
            layers.len()
        )));
    }
    let mut tensors = BTreeMap::new();
    for (l, c) in layers.iter().zip(&convs) {
        let (k, cin, cout) = (l.kernel, l.input[2], l.output[2]);
        let depthwise = l.kind == LayerKind::Depthwise;
        let want = if depthwise {
            vec![cin, 1, k, k]
        } else {
            vec![cout, cin, k, k]
        };
        let expected_pads = super::export::pads(l, padding).map(|v| v as i64).to_vec();
        let name = c.node.inputs.get(1).cloned().unwrap_or_default();
        if c.w.dims != want || c.stride != l.stride || c.group != if depthwise { cin } else { 1 } {
            return Err(bad(format!(
                "tensor {name:?} of node {:?}: shape {:?}, stride {}, group {}; layer {} needs {want:?}, stride {}",
                c.node.name, c.w.dims, c.stride, c.group, l.name, l.stride
            )));
        }
        if c.pads != expected_pads
            && !(k == 3 && c.pads == [1, 1, 1, 1] && padding == Padding::Symmetric)
        {
            return Err(bad(format!(
                "node {:?}: pads {:?}, layer {} needs {expected_pads:?} ({padding:?})",
                c.node.name, c.pads, l.name
            )));
        }
        if c.activation != Some(activation) {
            return Err(bad(format!(
                "node {:?}: not followed by the network's activation",
                c.node.name
            )));
        }
        let v = &c.w.values;
        let (shape, data) = match l.kind {
            // OIHW → HWIO.
            LayerKind::Conv => {
                let mut o = vec![0.0; v.len()];
                for co in 0..cout {
                    for ci in 0..cin {
                        for t in 0..k * k {
                            o[(t * cin + ci) * cout + co] = v[(co * cin + ci) * k * k + t];
                        }
                    }
                }
                (vec![k, k, cin, cout], o)
            }
            // [C, 1, 3, 3] → HWC.
            LayerKind::Depthwise => {
                let mut o = vec![0.0; v.len()];
                for ch in 0..cin {
                    for t in 0..k * k {
                        o[t * cin + ch] = v[ch * k * k + t];
                    }
                }
                (vec![k, k, cin], o)
            }
            // [O, I, 1, 1] → [I, O].
            _ => {
                let mut o = vec![0.0; v.len()];
                for co in 0..cout {
                    for ci in 0..cin {
                        o[ci * cout + co] = v[co * cin + ci];
                    }
                }
                (vec![cin, cout], o)
            }
        };
        tensors.insert(names::weight(&l.name), Tensor::new(shape, data));
        let bias = match c.bias {
            Some(b) if b.values.len() == cout => b.values.clone(),
            Some(_) => {
                return Err(bad(format!(
                    "node {:?}: bias of the wrong length",
                    c.node.name
                )))
            }
            None => vec![0.0; cout],
        };
        crate::weights::insert_folded_bias(&mut tensors, &l.name, bias);
    }
    if let Some((w, b, trans, n)) = fc {
        let cin = last.w.dims[0];
        let classes = config.classes().unwrap_or(0);
        let want = if trans {
            [classes, cin]
        } else {
            [cin, classes]
        };
        if w.dims != want || b.values.len() != classes {
            return Err(bad(format!(
                "node {:?}: classifier weights {:?} and {} biases; expected {want:?}",
                n.name,
                w.dims,
                b.values.len()
            )));
        }
        let mut o = w.values.clone();
        if trans {
            for co in 0..classes {
                for ci in 0..cin {
                    o[ci * classes + co] = w.values[co * cin + ci];
                }
            }
        }
        tensors.insert(names::FC_WEIGHT.into(), Tensor::new(vec![cin, classes], o));
        tensors.insert(
            names::FC_BIAS.into(),
            Tensor::new(vec![classes], b.values.clone()),
        );
    }
    let preprocessing = match p.metadata.get(crate::tflite::PREPROCESSING_METADATA) {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| bad(format!("the preprocessing metadata does not parse: {e}")))?,
        None => Preprocessing::default(),
    };
    let labels = p
        .metadata
        .get(crate::tflite::LABELS_METADATA)
        .map(|t| t.lines().map(str::to_string).collect());
    ModelFile::new(config, 0.0, preprocessing, labels, tensors, path)
}
