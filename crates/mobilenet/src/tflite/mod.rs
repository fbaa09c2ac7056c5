//! Reading `.tflite` files (TFLite flatbuffers) holding MobileNet v1 graphs.
//!
//! [`read`] verifies the flatbuffer and copies the parts a MobileNet needs into plain structs,
//! refusing with a clear message anything else: another file type, several subgraphs, an
//! operator outside CONV_2D / DEPTHWISE_CONV_2D / AVERAGE_POOL_2D / FULLY_CONNECTED / RESHAPE /
//! SOFTMAX, an index out of range, a constant tensor whose buffer is shorter than its shape.
//! [`MobileNetGraph::from_graph`] then matches the operators against the layer table and infers
//! α, resolution, classes and the activation.

mod convert;
mod export;
mod fb;
mod write;

pub use convert::{ConvTensors, MobileNetGraph};
pub use export::{float_graph, ExportError, LABELS_METADATA, PREPROCESSING_METADATA};
pub(crate) use export::{fused, tflite_weights};
pub use write::write;

use std::path::{Path, PathBuf};

/// A `.tflite` file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TfliteError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// Element types of tensors (the schema's `TensorType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 32-bit integer (biases of quantized layers).
    I32,
    /// Unsigned 8-bit (asymmetric per-tensor quantization, the 2018 models).
    U8,
    /// Signed 8-bit (per-channel weights of post-training quantization).
    I8,
    /// Anything else, by its schema code.
    Other(i8),
}

impl ElementType {
    fn from_code(code: i8) -> ElementType {
        match code {
            0 => ElementType::F32,
            2 => ElementType::I32,
            3 => ElementType::U8,
            9 => ElementType::I8,
            other => ElementType::Other(other),
        }
    }

    /// Bytes per element, if known.
    pub fn size(self) -> Option<usize> {
        match self {
            ElementType::F32 | ElementType::I32 => Some(4),
            ElementType::U8 | ElementType::I8 => Some(1),
            ElementType::Other(_) => None,
        }
    }
}

/// Quantization of a tensor: `real = scale · (q − zero_point)`, per tensor or per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantization {
    /// One scale, or one per channel of `axis`.
    pub scale: Vec<f32>,
    /// One zero point per scale.
    pub zero_point: Vec<i64>,
    /// The channel axis of per-channel quantization.
    pub axis: usize,
}

/// A tensor of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Name in the file.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Element type.
    pub kind: ElementType,
    /// Constant data (weights, biases), empty for activations.
    pub data: Vec<u8>,
    /// Quantization parameters, if any.
    pub quantization: Option<Quantization>,
}

/// Padding of a convolution or pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TfPadding {
    /// TensorFlow "SAME".
    Same,
    /// No padding.
    Valid,
}

/// A fused activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedActivation {
    /// None.
    None,
    /// ReLU.
    Relu,
    /// ReLU6.
    Relu6,
    /// Another schema code.
    Other(i8),
}

impl FusedActivation {
    fn from_code(code: i8) -> FusedActivation {
        match code {
            0 => FusedActivation::None,
            1 => FusedActivation::Relu,
            3 => FusedActivation::Relu6,
            other => FusedActivation::Other(other),
        }
    }
}

/// The operators a MobileNet v1 graph is made of.
#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    /// CONV_2D.
    Conv2d {
        /// (height, width) strides.
        stride: (usize, usize),
        /// Padding.
        padding: TfPadding,
        /// Fused activation.
        activation: FusedActivation,
    },
    /// DEPTHWISE_CONV_2D.
    Depthwise {
        /// (height, width) strides.
        stride: (usize, usize),
        /// Padding.
        padding: TfPadding,
        /// Fused activation.
        activation: FusedActivation,
        /// Channel multiplier.
        multiplier: usize,
    },
    /// AVERAGE_POOL_2D.
    AvgPool {
        /// (height, width) of the window.
        filter: (usize, usize),
        /// (height, width) strides.
        stride: (usize, usize),
        /// Padding.
        padding: TfPadding,
    },
    /// FULLY_CONNECTED.
    FullyConnected {
        /// Fused activation.
        activation: FusedActivation,
    },
    /// RESHAPE.
    Reshape,
    /// PAD with constant paddings `[(before, after); 4]` per NHWC dimension (the pad value
    /// is the zero point, i.e. real 0).
    Pad {
        /// (before, after) per dimension.
        paddings: [(usize, usize); 4],
    },
    /// SOFTMAX.
    Softmax {
        /// β.
        beta: f32,
    },
}

/// One operator with its input and output tensor indices (`None` for an absent optional input).
#[derive(Clone, Debug, PartialEq)]
pub struct OpInfo {
    /// What it computes.
    pub kind: OpKind,
    /// Input tensors.
    pub inputs: Vec<Option<usize>>,
    /// Output tensors.
    pub outputs: Vec<usize>,
}

/// The single subgraph of a `.tflite` file, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// Every tensor.
    pub tensors: Vec<TensorInfo>,
    /// Operators in execution order.
    pub ops: Vec<OpInfo>,
    /// Graph input tensors.
    pub inputs: Vec<usize>,
    /// Graph output tensors.
    pub outputs: Vec<usize>,
    /// The model's named metadata buffers (labels and preprocessing written by this crate;
    /// other producers' entries are kept as they are).
    pub metadata: Vec<(String, Vec<u8>)>,
}

impl Graph {
    /// The metadata buffer named `name`, if any.
    pub fn metadata_entry(&self, name: &str) -> Option<&[u8]> {
        self.metadata
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
    }

    /// The class labels this crate writes into the metadata (`export`, `quantize`), if any.
    ///
    /// # Errors
    ///
    /// Labels that are not UTF-8.
    pub fn labels(&self) -> Result<Option<Vec<String>>, String> {
        self.metadata_entry(LABELS_METADATA)
            .map(|d| {
                std::str::from_utf8(d)
                    .map(|t| t.lines().map(str::to_string).collect())
                    .map_err(|_| "the labels metadata is not UTF-8".to_string())
            })
            .transpose()
    }
}

/// Schema codes of the builtin operators MobileNet uses.
mod builtin {
    pub const AVERAGE_POOL_2D: i32 = 1;
    pub const CONV_2D: i32 = 3;
    pub const DEPTHWISE_CONV_2D: i32 = 4;
    pub const FULLY_CONNECTED: i32 = 9;
    pub const RESHAPE: i32 = 22;
    pub const PAD: i32 = 34;
    pub const SOFTMAX: i32 = 25;
}

fn padding(code: i8) -> TfPadding {
    if code == 1 {
        TfPadding::Valid
    } else {
        TfPadding::Same
    }
}

/// Whether `bytes` carry TFLite's `TFL3` file identifier. (The flatbuffers crate's own check
/// asserts on buffers shorter than 8 bytes.)
pub fn is_tflite(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && flatbuffers::buffer_has_identifier(bytes, "TFL3", false)
}

/// Reads and validates a `.tflite` file held in memory (`path` is used in messages).
pub fn read(bytes: &[u8], path: &Path) -> Result<Graph, TfliteError> {
    let bad = |reason: String| TfliteError {
        path: path.to_path_buf(),
        reason,
    };
    if !is_tflite(bytes) {
        return Err(bad("not a TFLite file (no TFL3 identifier)".into()));
    }
    let opts = flatbuffers::VerifierOptions {
        max_tables: 100_000,
        max_apparent_size: 1 << 31,
        ..Default::default()
    };
    let model = flatbuffers::root_with_opts::<fb::Model>(&opts, bytes).map_err(|e| {
        // The verifier's message spans lines (the error, then its trace): keep one line.
        let text = e.to_string();
        let parts: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        bad(format!("malformed flatbuffer: {}", parts.join("; ")))
    })?;
    if model.version() > 3 {
        return Err(bad(format!(
            "schema version {} is newer than this reader's (3)",
            model.version()
        )));
    }
    let codes: Vec<i32> = model
        .operator_codes()
        .map(|v| v.iter().map(|c| c.builtin()).collect())
        .unwrap_or_default();
    let buffers: Vec<fb::Buffer> = model
        .buffers()
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let subgraphs = model.subgraphs().ok_or_else(|| bad("no subgraph".into()))?;
    if subgraphs.len() != 1 {
        return Err(bad(format!(
            "{} subgraphs: a MobileNet has exactly one",
            subgraphs.len()
        )));
    }
    let sg = subgraphs.get(0);
    let raw_tensors: Vec<fb::Tensor> = sg.tensors().map(|v| v.iter().collect()).unwrap_or_default();
    let mut tensors = Vec::with_capacity(raw_tensors.len());
    for (i, t) in raw_tensors.iter().enumerate() {
        let name = t.name().unwrap_or("").to_string();
        let shape: Vec<usize> = t
            .shape()
            .map(|s| {
                s.iter()
                    .map(|d| {
                        usize::try_from(d).map_err(|_| {
                            bad(format!("tensor {i} {name:?} has negative dimension {d}"))
                        })
                    })
                    .collect()
            })
            .transpose()?
            .unwrap_or_default();
        let kind = ElementType::from_code(t.kind());
        let buffer = t.buffer() as usize;
        if buffer >= buffers.len().max(1) && buffer != 0 {
            return Err(bad(format!(
                "tensor {i} {name:?} names buffer {buffer}, the file has {}",
                buffers.len()
            )));
        }
        let data = match buffers.get(buffer) {
            Some(b) if b.offset() != 0 => {
                return Err(bad(format!(
                    "tensor {name:?}: data stored outside the flatbuffer is not supported"
                )))
            }
            Some(b) => b.data().unwrap_or(&[]).to_vec(),
            None => Vec::new(),
        };
        if !data.is_empty() {
            let count = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("tensor {name:?}: shape {shape:?} overflows")))?;
            let size = kind
                .size()
                .ok_or_else(|| bad(format!("tensor {name:?} has unsupported type {kind:?}")))?;
            if data.len() != count * size {
                return Err(bad(format!(
                    "tensor {name:?} of shape {shape:?} needs {} bytes, its buffer has {}",
                    count * size,
                    data.len()
                )));
            }
        }
        let quantization = t.quantization().and_then(|q| {
            let scale: Vec<f32> = q.scale()?.iter().collect();
            if scale.is_empty() {
                return None;
            }
            let zero_point: Vec<i64> = q
                .zero_point()
                .map(|z| z.iter().collect())
                .unwrap_or_else(|| vec![0; scale.len()]);
            Some(Quantization {
                scale,
                zero_point,
                axis: q.quantized_dimension().max(0) as usize,
            })
        });
        if let Some(q) = &quantization {
            if q.zero_point.len() != q.scale.len() {
                return Err(bad(format!(
                    "tensor {name:?}: {} scales but {} zero points",
                    q.scale.len(),
                    q.zero_point.len()
                )));
            }
        }
        tensors.push(TensorInfo {
            name,
            shape,
            kind,
            data,
            quantization,
        });
    }
    let index = |i: i32, what: &str| -> Result<usize, TfliteError> {
        usize::try_from(i)
            .ok()
            .filter(|&i| i < tensors.len())
            .ok_or_else(|| {
                bad(format!(
                    "{what} refers to tensor {i}, the graph has {}",
                    tensors.len()
                ))
            })
    };
    let mut ops = Vec::new();
    for (n, op) in sg
        .operators()
        .map(|v| v.iter().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let code = *codes.get(op.opcode_index() as usize).ok_or_else(|| {
            bad(format!(
                "operator {n} uses opcode {}, the file has {}",
                op.opcode_index(),
                codes.len()
            ))
        })?;
        let missing = |what: &str| bad(format!("operator {n} ({what}) has no options"));
        let kind = match code {
            builtin::CONV_2D => {
                let o = op.conv2d().ok_or_else(|| missing("CONV_2D"))?;
                if o.dilation() != (1, 1) {
                    return Err(bad(format!("operator {n}: dilated convolutions are not part of MobileNet v1")));
                }
                let (sh, sw) = o.stride();
                OpKind::Conv2d {
                    stride: (sh.max(1) as usize, sw.max(1) as usize),
                    padding: padding(o.padding()),
                    activation: FusedActivation::from_code(o.activation()),
                }
            }
            builtin::DEPTHWISE_CONV_2D => {
                let o = op.depthwise().ok_or_else(|| missing("DEPTHWISE_CONV_2D"))?;
                if o.dilation() != (1, 1) {
                    return Err(bad(format!("operator {n}: dilated convolutions are not part of MobileNet v1")));
                }
                let (sh, sw) = o.stride();
                OpKind::Depthwise {
                    stride: (sh.max(1) as usize, sw.max(1) as usize),
                    padding: padding(o.padding()),
                    activation: FusedActivation::from_code(o.activation()),
                    multiplier: o.depth_multiplier().max(1) as usize,
                }
            }
            builtin::AVERAGE_POOL_2D => {
                let o = op.pool2d().ok_or_else(|| missing("AVERAGE_POOL_2D"))?;
                if FusedActivation::from_code(o.activation()) != FusedActivation::None {
                    return Err(bad(format!("operator {n}: an average pool with a fused activation is not part of MobileNet v1")));
                }
                let (fh, fw) = o.filter();
                let (sh, sw) = o.stride();
                OpKind::AvgPool {
                    filter: (fh.max(1) as usize, fw.max(1) as usize),
                    stride: (sh.max(1) as usize, sw.max(1) as usize),
                    padding: padding(o.padding()),
                }
            }
            builtin::FULLY_CONNECTED => {
                let o = op.fully_connected().ok_or_else(|| missing("FULLY_CONNECTED"))?;
                if o.weights_format() != 0 {
                    return Err(bad(format!("operator {n}: shuffled fully-connected weights are not supported")));
                }
                OpKind::FullyConnected {
                    activation: FusedActivation::from_code(o.activation()),
                }
            }
            builtin::RESHAPE => OpKind::Reshape,
            builtin::PAD => {
                let p = op
                    .inputs()
                    .and_then(|v| (v.len() == 2).then(|| v.get(1)))
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| tensors.get(i))
                    .ok_or_else(|| bad(format!("operator {n} (PAD) has no paddings tensor")))?;
                if p.kind != ElementType::I32 || p.shape != [4, 2] || p.data.len() != 32 {
                    return Err(bad(format!(
                        "operator {n} (PAD): paddings must be a constant int32 [4, 2] tensor"
                    )));
                }
                let v: Vec<usize> = p
                    .data
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .map(|x| usize::try_from(x).ok().filter(|&x| x <= 16))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad(format!("operator {n} (PAD): paddings must be 0..=16")))?;
                OpKind::Pad {
                    paddings: [(v[0], v[1]), (v[2], v[3]), (v[4], v[5]), (v[6], v[7])],
                }
            }
            builtin::SOFTMAX => OpKind::Softmax {
                beta: op.softmax().map_or(1.0, |o| o.beta()),
            },
            other => {
                return Err(bad(format!(
                    "operator {n} is builtin code {other}, which MobileNet v1 does not use (supported: CONV_2D, DEPTHWISE_CONV_2D, AVERAGE_POOL_2D, FULLY_CONNECTED, RESHAPE, PAD, SOFTMAX)"
                )))
            }
        };
        let inputs = op
            .inputs()
            .map(|v| {
                v.iter()
                    .map(|i| {
                        if i < 0 {
                            Ok(None)
                        } else {
                            index(i, &format!("operator {n}")).map(Some)
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let outputs = op
            .outputs()
            .map(|v| {
                v.iter()
                    .map(|i| index(i, &format!("operator {n}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        ops.push(OpInfo {
            kind,
            inputs,
            outputs,
        });
    }
    let list =
        |v: Option<flatbuffers::Vector<i32>>, what: &str| -> Result<Vec<usize>, TfliteError> {
            v.map(|v| v.iter().map(|i| index(i, what)).collect())
                .unwrap_or(Ok(Vec::new()))
        };
    let inputs = list(sg.inputs(), "the graph input")?;
    let outputs = list(sg.outputs(), "the graph output")?;
    let mut metadata = Vec::new();
    for m in model
        .metadata()
        .map(|v| v.iter().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let name = m.name().unwrap_or("").to_string();
        let data = match buffers.get(m.buffer() as usize) {
            Some(b) if b.offset() == 0 => b.data().unwrap_or(&[]).to_vec(),
            _ => {
                return Err(bad(format!(
                    "metadata {name:?} names a missing buffer {}",
                    m.buffer()
                )))
            }
        };
        metadata.push((name, data));
    }
    Ok(Graph {
        tensors,
        ops,
        inputs,
        outputs,
        metadata,
    })
}
