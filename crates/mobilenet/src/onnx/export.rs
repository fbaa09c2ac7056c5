//! The ONNX writer (see the module docs of [`super`]).

use crate::config::{Activation, Padding};
use crate::layers::{Layer, LayerKind};
use crate::preprocess::Preprocessing;
use crate::tflite::ExportError;
use crate::weights::ModelFile;

use super::proto::Msg;

/// The input layout of an exported graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[1, 3, R, R]`, what ONNX models usually take.
    Nchw,
    /// `[1, R, R, 3]`, as TensorFlow and our engine.
    Nhwc,
}

// TensorProto.DataType.
pub(super) const FLOAT: i64 = 1;
pub(super) const UINT8: i64 = 2;
pub(super) const INT8: i64 = 3;
pub(super) const INT32: i64 = 6;
// AttributeProto.AttributeType.
const ATTR_FLOAT: i64 = 1;
const ATTR_INT: i64 = 2;
const ATTR_INTS: i64 = 7;

pub(super) enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// The graph under construction: nodes and initializers.
#[derive(Default)]
pub(super) struct GraphBuilder {
    nodes: Vec<Msg>,
    initializers: Vec<Msg>,
}

impl GraphBuilder {
    pub(super) fn initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer_raw(name, dims, FLOAT, &raw)
    }

    /// A constant of element type `dtype` (a TensorProto.DataType) from its little-endian bytes.
    pub(super) fn initializer_raw(
        &mut self,
        name: &str,
        dims: &[usize],
        dtype: i64,
        raw: &[u8],
    ) -> String {
        let mut t = Msg::default();
        for &d in dims {
            t.int(1, d as i64);
        }
        t.int(2, dtype).string(8, name);
        t.bytes(9, raw);
        self.initializers.push(t);
        name.to_string()
    }

    pub(super) fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attrs: &[(&str, Attr)],
    ) {
        let mut n = Msg::default();
        for i in inputs {
            n.string(1, i);
        }
        n.string(2, output).string(3, name).string(4, op);
        for (key, value) in attrs {
            let mut a = Msg::default();
            a.string(1, key);
            match value {
                Attr::Int(v) => a.int(3, *v).int(20, ATTR_INT),
                Attr::Float(v) => a.float(2, *v).int(20, ATTR_FLOAT),
                Attr::Ints(vs) => {
                    for &v in vs {
                        a.int(8, v);
                    }
                    a.int(20, ATTR_INTS)
                }
            };
            n.msg(5, &a);
        }
        self.nodes.push(n);
    }
}

/// `[top, left, bottom, right]` padding of a 3×3 layer (none for 1×1).
pub(super) fn pads(l: &Layer, padding: Padding) -> [usize; 4] {
    if l.kernel == 1 {
        return [0; 4];
    }
    let g = l.geometry(padding);
    let extent = |out: usize, inp: usize| ((out - 1) * l.stride + l.kernel).saturating_sub(inp);
    let (h, w) = (
        extent(g.out_h, g.in_h).saturating_sub(g.pad_top),
        extent(g.out_w, g.in_w).saturating_sub(g.pad_left),
    );
    [g.pad_top, g.pad_left, h, w]
}

/// A value's type: a float tensor of `dims`.
fn value_info(name: &str, dims: &[usize]) -> Msg {
    let mut shape = Msg::default();
    for &d in dims {
        let mut dim = Msg::default();
        dim.int(1, d as i64);
        shape.msg(1, &dim);
    }
    let mut tensor = Msg::default();
    tensor.int(1, FLOAT).msg(2, &shape);
    let mut ty = Msg::default();
    ty.msg(1, &tensor);
    let mut v = Msg::default();
    v.string(1, name).msg(2, &ty);
    v
}

/// `file` as an ONNX model (see the module docs).
///
/// # Errors
///
/// A weight the layer table needs is missing or of the wrong size.
pub fn export_onnx(file: &ModelFile, layout: Layout) -> Result<Vec<u8>, ExportError> {
    let config = &file.config;
    let mut g = GraphBuilder::default();
    let (input_dims, mut cur) = g.input(layout, config.resolution());
    let bad = |e: crate::error::ModelError| ExportError(e.to_string());
    // Clip's bounds, only where there is a ReLU6 to clip (an unused initializer is a warning).
    let (zero, six) = match config.activation() {
        Activation::Relu6 => (
            g.initializer("relu6/min", &[], &[0.0]),
            g.initializer("relu6/max", &[], &[6.0]),
        ),
        Activation::Relu => (String::new(), String::new()),
    };
    let mut classes_out = None;
    for l in config.layers() {
        let [_, _, cout] = l.output;
        let cin = l.input[2];
        let out = format!("{}/output", l.name);
        match l.kind {
            LayerKind::AvgPool => {
                g.node("GlobalAveragePool", &l.name, &[&cur], &out, &[]);
                let flat = format!("{}/flat", l.name);
                g.node("Flatten", &flat, &[&out], &flat, &[("axis", Attr::Int(1))]);
                cur = flat;
            }
            LayerKind::Fc => {
                let fc = file.fc(&l).map_err(bad)?;
                // [in, out] → B of Gemm with transB: [out, in].
                let mut w = vec![0.0; fc.weight.len()];
                for i in 0..cin {
                    for o in 0..cout {
                        w[o * cin + i] = fc.weight[i * cout + o];
                    }
                }
                let wn = g.initializer(&format!("{}/weights", l.name), &[cout, cin], &w);
                let bn = g.initializer(&format!("{}/bias", l.name), &[cout], fc.bias);
                g.node(
                    "Gemm",
                    &l.name,
                    &[&cur, &wn, &bn],
                    "logits",
                    &[("transB", Attr::Int(1)), ("alpha", Attr::Float(1.0))],
                );
                cur = "logits".into();
                classes_out = Some(cout);
            }
            _ => {
                let conv = file.conv(&l).map_err(bad)?;
                let (scale, bias) = conv.folded_bn(file.bn_epsilon);
                let w = crate::infer::scale_columns(conv.weight, &scale);
                // HWIO / HWC / IO → OIHW (depthwise: [C, 1, 3, 3], group C).
                let k = l.kernel;
                let (dims, group, values) = match l.kind {
                    LayerKind::Depthwise => {
                        let mut o = vec![0.0; w.len()];
                        for c in 0..cin {
                            for t in 0..k * k {
                                o[c * k * k + t] = w[t * cin + c];
                            }
                        }
                        ([cin, 1, k, k], cin, o)
                    }
                    _ => {
                        let mut o = vec![0.0; w.len()];
                        for co in 0..cout {
                            for t in 0..k * k {
                                for ci in 0..cin {
                                    o[(co * cin + ci) * k * k + t] = w[(t * cin + ci) * cout + co];
                                }
                            }
                        }
                        ([cout, cin, k, k], 1, o)
                    }
                };
                let wn = g.initializer(&format!("{}/weights", l.name), &dims, &values);
                let bn = g.initializer(&format!("{}/bias", l.name), &[cout], &bias);
                let p = pads(&l, config.padding());
                let conv_out = format!("{}/conv", l.name);
                g.node(
                    "Conv",
                    &l.name,
                    &[&cur, &wn, &bn],
                    &conv_out,
                    &[
                        ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
                        ("strides", Attr::Ints(vec![l.stride as i64; 2])),
                        ("pads", Attr::Ints(p.map(|v| v as i64).to_vec())),
                        ("group", Attr::Int(group as i64)),
                    ],
                );
                match config.activation() {
                    Activation::Relu6 => g.node(
                        "Clip",
                        &format!("{}/relu6", l.name),
                        &[&conv_out, &zero, &six],
                        &out,
                        &[],
                    ),
                    Activation::Relu => {
                        g.node("Relu", &format!("{}/relu", l.name), &[&conv_out], &out, &[])
                    }
                }
                cur = out;
            }
        }
    }
    let out_dims = match classes_out {
        Some(c) => vec![1, c],
        None => vec![1, config.layers().last().map_or(0, |l| l.output[2])],
    };
    g.finish(
        &input_dims,
        (&cur, &out_dims),
        file.labels.as_deref(),
        &file.preprocessing,
    )
}

impl GraphBuilder {
    /// The graph's input `[1, 3, R, R]` or `[1, R, R, 3]`: its dimensions, and the name of the
    /// NCHW value the first layer reads (after a `Transpose` for NHWC).
    pub(super) fn input(&mut self, layout: Layout, res: usize) -> ([usize; 4], String) {
        match layout {
            Layout::Nchw => ([1, 3, res, res], "input".to_string()),
            Layout::Nhwc => {
                self.node(
                    "Transpose",
                    "input/nchw",
                    &["input"],
                    "input/nchw",
                    &[("perm", Attr::Ints(vec![0, 3, 1, 2]))],
                );
                ([1, res, res, 3], "input/nchw".to_string())
            }
        }
    }

    /// The model: this graph with float input `input` of `input_dims` and output `cur` of
    /// `out_dims`, opset 13, labels and preprocessing in the metadata.
    pub(super) fn finish(
        self,
        input_dims: &[usize],
        (cur, out_dims): (&str, &[usize]),
        labels: Option<&[String]>,
        preprocessing: &Preprocessing,
    ) -> Result<Vec<u8>, ExportError> {
        let g = self;
        let mut graph = Msg::default();
        for n in &g.nodes {
            graph.msg(1, n);
        }
        graph.string(2, "mobilenet_v1");
        for t in &g.initializers {
            graph.msg(5, t);
        }
        graph.msg(11, &value_info("input", input_dims));
        graph.msg(12, &value_info(cur, out_dims));
        let mut model = Msg::default();
        model
            .int(1, 8) // IR version 8 (ONNX 1.13+)
            .string(2, "mobilenet")
            .string(3, env!("CARGO_PKG_VERSION"))
            .msg(7, &graph);
        let mut opset = Msg::default();
        opset.string(1, "").int(2, 13);
        model.msg(8, &opset);
        let mut meta = |key: &str, value: &str| {
            let mut e = Msg::default();
            e.string(1, key).string(2, value);
            model.msg(14, &e);
        };
        if let Some(labels) = labels {
            meta(crate::tflite::LABELS_METADATA, &labels.join("\n"));
        }
        let pre = serde_json::to_string(preprocessing).map_err(|e| ExportError(e.to_string()))?;
        meta(crate::tflite::PREPROCESSING_METADATA, &pre);
        Ok(model.0)
    }
}
