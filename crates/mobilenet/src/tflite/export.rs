//! A float model as a float `.tflite` graph (what `mobilenet export --format tflite` writes):
//! batch norm folded into the convolutions' weights and biases, ReLU/ReLU6 fused, symmetric
//! stride-2 padding as PAD + VALID, the classifier as a 1×1 convolution and a reshape to
//! `[1, classes]`. The input is the normalised image, `[1, R, R, 3]` f32 as the model's
//! preprocessing makes it (Google's float `.tflite` files take the same); the output is the
//! logits. Labels and the preprocessing go in the metadata, as for quantized files, so that
//! the file comes back through [`crate::import`] with them.

use crate::config::{Activation, Padding};
use crate::layers::{Layer, LayerKind};
use crate::tflite::{ElementType, FusedActivation, Graph, OpInfo, OpKind, TensorInfo, TfPadding};
use crate::weights::ModelFile;

/// Metadata entry holding the class labels, one per line.
pub const LABELS_METADATA: &str = "mobilenet_labels";
/// Metadata entry holding the preprocessing as JSON.
pub const PREPROCESSING_METADATA: &str = "mobilenet_preprocessing";

/// Why a model cannot be exported.
#[derive(Debug, thiserror::Error)]
#[error("cannot export: {0}")]
pub struct ExportError(pub String);

/// A layer's folded float weights `w` (our layouts: HWIO convolutions, HWC depthwise, IO
/// pointwise and classifier) in TFLite's: OHWI for convolutions (1×1 included), 1HWC for
/// depthwise. Returns the values, their shape and the output-channel axis.
pub(crate) fn tflite_weights(l: &Layer, w: &[f32]) -> (Vec<f32>, Vec<usize>, usize) {
    let cout = l.output[2];
    let cin = l.input[2];
    let k = l.kernel;
    match l.kind {
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
        LayerKind::Depthwise => (w.to_vec(), vec![1, k, k, cin], 3),
        _ => {
            let mut o = vec![0.0; w.len()];
            for ci in 0..cin {
                for co in 0..cout {
                    o[co * cin + ci] = w[ci * cout + co];
                }
            }
            (o, vec![cout, 1, 1, cin], 0)
        }
    }
}

/// The fused activation of a non-linearity.
pub(crate) fn fused(a: Activation) -> FusedActivation {
    match a {
        Activation::Relu => FusedActivation::Relu,
        Activation::Relu6 => FusedActivation::Relu6,
    }
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| f(v)).collect()
}

struct FloatGraph(Graph);

impl FloatGraph {
    fn tensor(
        &mut self,
        name: String,
        shape: Vec<usize>,
        kind: ElementType,
        data: Vec<u8>,
    ) -> usize {
        self.0.tensors.push(TensorInfo {
            name,
            shape,
            kind,
            data,
            quantization: None,
        });
        self.0.tensors.len() - 1
    }

    fn op(&mut self, kind: OpKind, inputs: Vec<Option<usize>>, output: usize) {
        self.0.ops.push(OpInfo {
            kind,
            inputs,
            outputs: vec![output],
        });
    }

    /// Appends layer `l` reading tensor `src`, with its folded weights and bias.
    fn conv(
        &mut self,
        l: &Layer,
        (w, bias): (&[f32], &[f32]),
        src: usize,
        activation: FusedActivation,
        padding: Padding,
    ) -> usize {
        let [oh, ow, cout] = l.output;
        let (values, shape, _) = tflite_weights(l, w);
        let wt = self.tensor(
            format!("{}/weights", l.name),
            shape,
            ElementType::F32,
            le_bytes(&values, f32::to_le_bytes),
        );
        let bt = self.tensor(
            format!("{}/bias", l.name),
            vec![cout],
            ElementType::F32,
            le_bytes(bias, f32::to_le_bytes),
        );
        let out_shape = match l.kind {
            LayerKind::Fc => vec![1, 1, 1, cout],
            _ => vec![1, oh, ow, cout],
        };
        let out = self.tensor(
            format!("{}/output", l.name),
            out_shape,
            ElementType::F32,
            Vec::new(),
        );
        let (mut input, mut tf_padding) = (src, TfPadding::Same);
        // TF's SAME pads stride-2 layers at the bottom and right only; symmetric padding
        // (PyTorch's) is an explicit PAD and a VALID convolution.
        if l.kernel == 3 && l.stride == 2 && padding == Padding::Symmetric {
            let [ih, iw, cin] = l.input;
            let pads = le_bytes(&[0i32, 0, 1, 1, 1, 1, 0, 0], i32::to_le_bytes);
            let pt = self.tensor(
                format!("{}/paddings", l.name),
                vec![4, 2],
                ElementType::I32,
                pads,
            );
            let padded = self.tensor(
                format!("{}/padded", l.name),
                vec![1, ih + 2, iw + 2, cin],
                ElementType::F32,
                Vec::new(),
            );
            self.op(
                OpKind::Pad {
                    paddings: [(0, 0), (1, 1), (1, 1), (0, 0)],
                },
                vec![Some(src), Some(pt)],
                padded,
            );
            input = padded;
            tf_padding = TfPadding::Valid;
        }
        let kind = match l.kind {
            LayerKind::Depthwise => OpKind::Depthwise {
                stride: (l.stride, l.stride),
                padding: tf_padding,
                activation,
                multiplier: 1,
            },
            _ => OpKind::Conv2d {
                stride: (l.stride, l.stride),
                padding: tf_padding,
                activation,
            },
        };
        self.op(kind, vec![Some(input), Some(wt), Some(bt)], out);
        out
    }
}

/// `file` as a float TFLite graph (see the module docs); write it with
/// [`crate::tflite::write`].
///
/// # Errors
///
/// A weight the layer table needs is missing or of the wrong size.
pub fn float_graph(file: &ModelFile) -> Result<Graph, ExportError> {
    let config = &file.config;
    let res = config.resolution();
    let mut g = FloatGraph(Graph {
        tensors: Vec::new(),
        ops: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        metadata: Vec::new(),
    });
    let mut cur = g.tensor(
        "input".into(),
        vec![1, res, res, 3],
        ElementType::F32,
        Vec::new(),
    );
    g.0.inputs.push(cur);
    let act = fused(config.activation());
    let bad = |e: crate::error::ModelError| ExportError(e.to_string());
    for l in config.layers() {
        let cout = l.output[2];
        if l.kind == LayerKind::AvgPool {
            let out = g.tensor(
                format!("{}/output", l.name),
                vec![1, 1, 1, cout],
                ElementType::F32,
                Vec::new(),
            );
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
        let (w, bias, activation) = if l.kind == LayerKind::Fc {
            let fc = file.fc(&l).map_err(bad)?;
            (fc.weight.to_vec(), fc.bias.to_vec(), FusedActivation::None)
        } else {
            let conv = file.conv(&l).map_err(bad)?;
            let (scale, bias) = conv.folded_bn(file.bn_epsilon);
            (crate::infer::scale_columns(conv.weight, &scale), bias, act)
        };
        cur = g.conv(&l, (&w, &bias), cur, activation, config.padding());
        if l.kind == LayerKind::Fc {
            let shape = le_bytes(&[1i32, cout as i32], i32::to_le_bytes);
            let st = g.tensor("logits/shape".into(), vec![2], ElementType::I32, shape);
            let logits = g.tensor("logits".into(), vec![1, cout], ElementType::F32, Vec::new());
            g.op(OpKind::Reshape, vec![Some(cur), Some(st)], logits);
            cur = logits;
        }
    }
    g.0.outputs.push(cur);
    if let Some(labels) = &file.labels {
        g.0.metadata
            .push((LABELS_METADATA.into(), labels.join("\n").into_bytes()));
    }
    let pre = serde_json::to_vec(&file.preprocessing).map_err(|e| ExportError(e.to_string()))?;
    g.0.metadata.push((PREPROCESSING_METADATA.into(), pre));
    Ok(g.0)
}
