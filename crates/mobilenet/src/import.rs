//! Converting other weight files into our model format, with explicit name mapping.
//!
//! Supported sources (detected from the tensor names):
//! - **TF-slim** (`MobilenetV1/Conv2d_0/weights`, …): Google's checkpoints as safetensors, as in
//!   `../shared/data/mobilenet_v1/float/`. 1001 classes (index 0 = background), TF SAME
//!   padding, ReLU6, BN ε 1e-3, input `x/127.5 − 1`.
//! - **Keras** (`conv1.kernel`, `conv_dw_1.depthwise_kernel`, …, `conv_preds.kernel`): the
//!   layout `keras.applications.MobileNet` saves (used by the peer benchmark's models).
//! - **timm** (`conv_stem.weight`, `blocks.S.I.conv_dw.weight`, …, `classifier.weight`): a
//!   PyTorch state dict of timm's `mobilenetv1_100` family saved as safetensors. Weights are
//!   OIHW and transposed on the way in; symmetric padding, ReLU6, BN ε 1e-5, and by default the
//!   input `x/127.5 − 1` of timm's published `ra4` weights (Inception mean and std, 0.5).
//! - **TFLite** flatbuffers of MobileNet v1 graphs (see [`crate::tflite`]): float weights as
//!   they are, 8-bit weights dequantized.
//!
//! Every tensor the network needs is looked up by the name the layer table gives it; a missing,
//! extra or mis-shaped tensor is an error naming it.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{Activation, MobileNetConfig, Padding};
use crate::error::ModelError;
use crate::layers::{Layer, LayerKind};
use crate::preprocess::{PixelNorm, Preprocessing};
use crate::weights::{names, read_safetensors, BnTensor, ModelFile, Tensor, DEFAULT_BN_EPSILON};

/// The weight layouts `import` understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// Our own format (nothing to convert).
    Native,
    /// TF-slim names (`MobilenetV1/...`).
    TfSlim,
    /// Keras `applications.MobileNet` names.
    Keras,
    /// A timm `mobilenetv1_*` state dict (PyTorch names and OIHW layout).
    Timm,
    /// A TFLite flatbuffer (float weights, or 8-bit weights dequantized).
    Tflite,
    /// An ONNX MobileNet v1 graph (batch norm folded), by its `.onnx` extension.
    Onnx,
}

/// Options that the source file cannot tell.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Input resolution (the weights fit any; default 224).
    pub resolution: Option<usize>,
    /// Class labels, one per output.
    pub labels: Option<Vec<String>>,
    /// Input normalisation, where the source's convention is not the one its weights were
    /// trained with (a timm model trained with ImageNet's mean and std).
    pub norm: Option<PixelNorm>,
    /// Centre-crop fraction, likewise.
    pub crop: Option<f32>,
}

impl ImportOptions {
    /// Puts the labels and preprocessing the user gave over what the source said.
    fn apply(&self, model: &mut ModelFile) {
        if let Some(labels) = &self.labels {
            model.labels = Some(labels.clone());
        }
        if let Some(norm) = self.norm {
            model.preprocessing.norm = norm;
        }
        if let Some(crop) = self.crop {
            model.preprocessing.crop = crop;
        }
    }
}

/// Reads a labels file: one label per line; blank lines at the end are ignored.
pub fn read_labels(path: &Path) -> Result<Vec<String>, ModelError> {
    let bytes = crate::files::read_regular(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| ModelError::Metadata {
        path: path.to_path_buf(),
        reason: "the labels file is not UTF-8 text".into(),
    })?;
    parse_labels(&text, path)
}

/// Labels from the text of a labels file, one per line (`path` names it in errors).
///
/// # Errors
///
/// Text without a label.
pub fn parse_labels(text: &str, path: &Path) -> Result<Vec<String>, ModelError> {
    let labels: Vec<String> = text
        .trim_end()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    if labels.is_empty() || labels.iter().all(String::is_empty) {
        return Err(ModelError::Labels {
            path: path.to_path_buf(),
            reason: "the labels file is empty".to_string(),
        });
    }
    Ok(labels)
}

/// Converts the weight file at `path` into a [`ModelFile`].
pub fn import(
    path: &Path,
    options: &ImportOptions,
) -> Result<(ModelFile, SourceFormat), ModelError> {
    let bytes = crate::files::read_regular(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    import_bytes(&bytes, path, options)
}

/// Converts a weight file held in memory (`path` is used in messages).
pub fn import_bytes(
    bytes: &[u8],
    path: &Path,
    options: &ImportOptions,
) -> Result<(ModelFile, SourceFormat), ModelError> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        let mut model = crate::onnx::read_onnx(bytes, path)?;
        options.apply(&mut model);
        model.validate(path)?;
        return Ok((model, SourceFormat::Onnx));
    }
    if crate::tflite::is_tflite(bytes) {
        let bad = |e: crate::tflite::TfliteError| ModelError::Metadata {
            path: e.path,
            reason: e.reason,
        };
        let graph = crate::tflite::read(bytes, path).map_err(bad)?;
        let net = crate::tflite::MobileNetGraph::from_graph(&graph, path).map_err(bad)?;
        let mut model = net.to_model_file(&graph, path).map_err(bad)?;
        options.apply(&mut model);
        model.validate(path)?;
        return Ok((model, SourceFormat::Tflite));
    }
    let (tensors, metadata) = read_safetensors(bytes, path)?;
    let format = if metadata.get("format").map(String::as_str) == Some(crate::weights::FORMAT) {
        SourceFormat::Native
    } else if tensors.keys().any(|k| k.starts_with("MobilenetV1/")) {
        SourceFormat::TfSlim
    } else if tensors.contains_key("conv1.kernel") {
        SourceFormat::Keras
    } else if tensors.contains_key("conv_stem.weight") {
        refuse_other_timm_models(&tensors, path)?;
        SourceFormat::Timm
    } else {
        return Err(ModelError::Metadata {
            path: path.to_path_buf(),
            reason: "unrecognised weight names: expected TF-slim (MobilenetV1/...), Keras \
                     (conv1.kernel, ...), timm (conv_stem.weight, blocks.0.0.conv_dw.weight, \
                     ...) or a mobilenet model file"
                .to_string(),
        });
    };
    let mut model = match format {
        // The tensors already read, not a second parse: a second copy of the weights would
        // raise the peak memory of every command that loads a model (53 vs 41 MB at 1.0-224).
        SourceFormat::Native => ModelFile::from_parts(tensors, &metadata, path)?,
        SourceFormat::TfSlim => convert(path, tensors, &TF_SLIM, options)?,
        SourceFormat::Keras => convert(path, tensors, &KERAS, options)?,
        SourceFormat::Timm => convert(path, tensors, &TIMM, options)?,
        SourceFormat::Tflite | SourceFormat::Onnx => unreachable!("returned above"),
    };
    options.apply(&mut model);
    if let Some(res) = options.resolution {
        model.config =
            rebuild_with_resolution(&model.config, res).map_err(|source| ModelError::Config {
                path: path.to_path_buf(),
                source,
            })?;
    }
    model.validate(path)?;
    Ok((model, format))
}

fn rebuild_with_resolution(
    c: &MobileNetConfig,
    resolution: usize,
) -> Result<MobileNetConfig, crate::ConfigError> {
    let mut n = MobileNetConfig::new(c.alpha(), resolution)?
        .with_min_depth(c.min_depth())?
        .with_activation(c.activation())
        .with_padding(c.padding())
        .with_variant(c.variant())
        .with_stem(c.stem());
    n = match c.head() {
        Some(h) => n.with_classes(h.classes)?.with_dropout(h.dropout)?,
        None => n.without_head(),
    };
    Ok(n)
}

/// How a source names and lays out the tensors of each layer.
struct Naming {
    /// Weight tensor name of a layer.
    weight: fn(&Layer) -> Option<String>,
    /// Batch-norm tensor name of a layer for one of gamma/beta/moving_mean/moving_variance.
    bn: fn(&Layer, &str) -> Option<String>,
    /// FC weight and bias names.
    fc: (&'static str, &'static str),
    /// The name of the stem weight, from which α is inferred.
    stem: &'static str,
    /// Output of the last pointwise layer, from which α is inferred.
    last_pointwise: &'static str,
    /// Conventions of models in this format.
    layout: Layout,
    padding: Padding,
    activation: Activation,
    bn_epsilon: f32,
    preprocessing: Preprocessing,
}

/// How a source orders the dimensions of its weights.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// TensorFlow's `[kh, kw, cin, cout]` (depthwise `[kh, kw, c, 1]`, dense `[cin, cout]`):
    /// ours, up to unit dimensions.
    Hwio,
    /// PyTorch's `[cout, cin, kh, kw]` (depthwise `[c, 1, kh, kw]`, dense `[cout, cin]`).
    Oihw,
}

impl Layout {
    /// Output channels of a weight of this layout.
    fn out_channels(self, shape: &[usize]) -> Option<usize> {
        match self {
            Layout::Hwio => shape.last().copied(),
            Layout::Oihw => shape.first().copied(),
        }
    }

    /// The shape a source of this layout gives our tensor of `shape` (`dense`: the classifier,
    /// whose 2-D weight is not a 1×1 convolution's).
    fn source_shape(self, shape: &[usize], dense: bool) -> Vec<usize> {
        match (self, shape) {
            (Layout::Hwio, _) => shape.to_vec(),
            (Layout::Oihw, &[kh, kw, i, o]) => vec![o, i, kh, kw],
            (Layout::Oihw, &[kh, kw, c]) => vec![c, 1, kh, kw],
            (Layout::Oihw, &[i, o]) if dense => vec![o, i],
            (Layout::Oihw, &[i, o]) => vec![o, i, 1, 1],
            (Layout::Oihw, _) => shape.to_vec(),
        }
    }

    /// The weight in TensorFlow's order (a copy for OIHW, the tensor itself for HWIO).
    fn to_hwio(self, t: Tensor) -> Tensor {
        match (self, t.shape.as_slice()) {
            (Layout::Oihw, &[o, i, kh, kw]) => {
                let mut data = vec![0.0; t.data.len()];
                for (n, &v) in t.data.iter().enumerate() {
                    let (oi, rest) = (n / (i * kh * kw), n % (i * kh * kw));
                    let (ii, k) = (rest / (kh * kw), rest % (kh * kw));
                    data[(k * i + ii) * o + oi] = v;
                }
                Tensor::new(vec![kh, kw, i, o], data)
            }
            (Layout::Oihw, &[o, i]) => {
                let mut data = vec![0.0; t.data.len()];
                for (n, &v) in t.data.iter().enumerate() {
                    data[(n % i) * o + n / i] = v;
                }
                Tensor::new(vec![i, o], data)
            }
            _ => t,
        }
    }
}

const TF_SLIM: Naming = Naming {
    weight: |l| {
        let scope = l.tf_slim_scope()?;
        Some(match l.kind {
            LayerKind::Depthwise => format!("{scope}/depthwise_weights"),
            _ => format!("{scope}/weights"),
        })
    },
    bn: |l, p| Some(format!("{}/BatchNorm/{p}", l.tf_slim_scope()?)),
    fc: (
        "MobilenetV1/Logits/Conv2d_1c_1x1/weights",
        "MobilenetV1/Logits/Conv2d_1c_1x1/biases",
    ),
    stem: "MobilenetV1/Conv2d_0/weights",
    last_pointwise: "MobilenetV1/Conv2d_13_pointwise/weights",
    layout: Layout::Hwio,
    padding: Padding::TfSame,
    activation: Activation::Relu6,
    bn_epsilon: DEFAULT_BN_EPSILON,
    preprocessing: Preprocessing {
        crop: 0.875,
        norm: PixelNorm::MinusOneToOne,
    },
};

fn keras_scope(l: &Layer) -> Option<String> {
    let i = l.block?;
    match l.kind {
        LayerKind::Conv if i == 0 => Some("conv1".to_string()),
        LayerKind::Depthwise => Some(format!("conv_dw_{i}")),
        LayerKind::Pointwise => Some(format!("conv_pw_{i}")),
        _ => None,
    }
}

const KERAS: Naming = Naming {
    weight: |l| {
        let scope = keras_scope(l)?;
        Some(match l.kind {
            LayerKind::Depthwise => format!("{scope}.depthwise_kernel"),
            _ => format!("{scope}.kernel"),
        })
    },
    bn: |l, p| Some(format!("{}_bn.{p}", keras_scope(l)?)),
    fc: ("conv_preds.kernel", "conv_preds.bias"),
    stem: "conv1.kernel",
    last_pointwise: "conv_pw_13.kernel",
    layout: Layout::Hwio,
    padding: Padding::TfSame,
    activation: Activation::Relu6,
    bn_epsilon: DEFAULT_BN_EPSILON,
    preprocessing: Preprocessing {
        crop: 0.875,
        norm: PixelNorm::MinusOneToOne,
    },
};

/// timm's module of block `i` (1–13): its stages hold 1, 2, 2, 6 and 2 blocks (Table 1's
/// rows between stride-2 layers), named `blocks.{stage}.{index}`.
fn timm_scope(l: &Layer) -> Option<String> {
    let i = l.block?;
    if i == 0 {
        return (l.kind == LayerKind::Conv).then(String::new);
    }
    let (stage, first) = [(0, 1), (1, 2), (2, 4), (3, 6), (4, 12)]
        .into_iter()
        .rev()
        .find(|&(_, first)| i >= first)?;
    (i <= 13).then(|| format!("blocks.{stage}.{}.", i - first))
}

const TIMM: Naming = Naming {
    weight: |l| {
        let scope = timm_scope(l)?;
        Some(match l.kind {
            LayerKind::Conv => "conv_stem.weight".to_string(),
            LayerKind::Depthwise => format!("{scope}conv_dw.weight"),
            _ => format!("{scope}conv_pw.weight"),
        })
    },
    bn: |l, p| {
        let leaf = match p {
            "gamma" => "weight",
            "beta" => "bias",
            "moving_mean" => "running_mean",
            _ => "running_var",
        };
        // The stem's norm is `bn1`; in a block `bn1` follows the depthwise conv, `bn2` the
        // pointwise one.
        let bn = if l.kind == LayerKind::Pointwise {
            "bn2"
        } else {
            "bn1"
        };
        Some(format!("{}{bn}.{leaf}", timm_scope(l)?))
    },
    fc: ("classifier.weight", "classifier.bias"),
    stem: "conv_stem.weight",
    last_pointwise: "blocks.4.1.conv_pw.weight",
    layout: Layout::Oihw,
    padding: Padding::Symmetric,
    activation: Activation::Relu6,
    bn_epsilon: 1e-5,
    // timm's published MobileNet v1 weights (`mobilenetv1_100.ra4_e3600_r224_in1k`) take
    // Inception's mean and std (0.5, 0.5): x/127.5 − 1.
    preprocessing: Preprocessing {
        crop: 0.875,
        norm: PixelNorm::MinusOneToOne,
    },
};

/// timm names many networks' stems `conv_stem`; say which other one a file holds rather than
/// report the first MobileNet v1 tensor it lacks.
fn refuse_other_timm_models(
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<(), ModelError> {
    let what = |name: &str| {
        let part = name.split('.').rev().nth(1).unwrap_or(name);
        match part {
            "conv_head" => Some(
                "a head convolution after the last block (timm's \
                                 mobilenetv1_100h, MobileNet v2/v3, EfficientNet)",
            ),
            "conv_pwl" => Some("inverted residual blocks (MobileNet v2/v3, EfficientNet)"),
            "conv_reduce" | "conv_expand" => {
                Some("squeeze-and-excitation (MobileNet v3, EfficientNet)")
            }
            _ => None,
        }
    };
    match tensors.keys().find_map(|n| what(n).map(|w| (n, w))) {
        Some((name, what)) => Err(ModelError::Metadata {
            path: path.to_path_buf(),
            reason: format!(
                "a timm state dict, but not of MobileNet v1: tensor {name:?} belongs to {what}, \
                 which MobileNet v1 (the paper's Table 1) does not have"
            ),
        }),
        None => Ok(()),
    }
}

fn convert(
    path: &Path,
    mut source: BTreeMap<String, Tensor>,
    naming: &Naming,
    options: &ImportOptions,
) -> Result<ModelFile, ModelError> {
    let missing = |name: &str, shape: Vec<usize>| ModelError::MissingTensor {
        path: path.to_path_buf(),
        name: name.to_string(),
        shape,
    };
    // α from the width of the last pointwise layer (1024·α); classes from the classifier.
    let last = source
        .get(naming.last_pointwise)
        .ok_or_else(|| missing(naming.last_pointwise, vec![1, 1, 0, 0]))?;
    let width = naming.layout.out_channels(&last.shape).unwrap_or(0);
    // The width gives α up to rounding; prefer the two-decimal α that reproduces it
    // (0.35, not 0.349609375) so that names and reports read as the checkpoint's.
    let exact = width as f64 / 1024.0;
    let rounded = (exact * 100.0).round() / 100.0;
    let alpha = if rounded > 0.0 && (1024.0 * rounded) as usize == width {
        rounded
    } else {
        exact
    };
    let fc = source
        .get(naming.fc.0)
        .ok_or_else(|| missing(naming.fc.0, vec![1, 1, width, 0]))?;
    let classes = naming.layout.out_channels(&fc.shape).unwrap_or(0);
    let resolution = options.resolution.unwrap_or(224);
    let config = MobileNetConfig::new(alpha, resolution)
        .and_then(|c| c.with_classes(classes))
        .map_err(|source| ModelError::Config {
            path: path.to_path_buf(),
            source,
        })?
        .with_padding(naming.padding)
        .with_activation(naming.activation);
    let stem_width = source
        .get(naming.stem)
        .and_then(|t| naming.layout.out_channels(&t.shape));
    if stem_width != Some(config.depth(32)) {
        return Err(ModelError::Metadata {
            path: path.to_path_buf(),
            reason: format!(
                "{} does not have the {} channels α = {alpha} implies",
                naming.stem,
                config.depth(32)
            ),
        });
    }

    let mut tensors = BTreeMap::new();
    let mut take = |from: &str, to: String, shape: Vec<usize>| -> Result<(), ModelError> {
        let t = source
            .remove(from)
            .ok_or_else(|| missing(from, shape.clone()))?;
        let count: usize = shape.iter().product();
        let expected = naming.layout.source_shape(&shape, to == names::FC_WEIGHT);
        // TF layouts differ from ours only in unit dimensions ([1,1,cin,cout] → [cin,cout],
        // [3,3,c,1] → [3,3,c]); PyTorch's must be exactly the transposed shape.
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        let fits = match naming.layout {
            Layout::Hwio => squeeze(&t.shape) == squeeze(&shape),
            Layout::Oihw => t.shape == expected,
        };
        if t.data.len() != count || !fits {
            return Err(ModelError::Shape {
                path: path.to_path_buf(),
                name: from.to_string(),
                expected,
                found: t.shape,
            });
        }
        let t = naming.layout.to_hwio(t);
        tensors.insert(to, Tensor::new(shape, t.data));
        Ok(())
    };
    for layer in config.layers() {
        let cout = layer.output[2];
        match layer.kind {
            LayerKind::AvgPool => continue,
            LayerKind::Fc => {
                take(
                    naming.fc.0,
                    names::FC_WEIGHT.into(),
                    vec![layer.input[2], cout],
                )?;
                take(naming.fc.1, names::FC_BIAS.into(), vec![cout])?;
                continue;
            }
            _ => {}
        }
        let spec = crate::weights::tensor_specs(&config)
            .into_iter()
            .find(|s| s.name == names::weight(&layer.name))
            .map(|s| s.shape)
            .unwrap_or_default();
        let name = (naming.weight)(&layer).unwrap_or_default();
        take(&name, names::weight(&layer.name), spec)?;
        // TF-slim and Keras name the four batch-norm tensors as we do.
        for t in BnTensor::ALL {
            let name = (naming.bn)(&layer, t.leaf()).unwrap_or_default();
            take(&name, names::bn(&layer.name, t), vec![cout])?;
        }
    }
    if let Some(extra) = source.keys().next() {
        return Err(ModelError::UnexpectedTensor {
            path: path.to_path_buf(),
            name: extra.clone(),
            config: config.to_string(),
        });
    }
    let (eps, pre, labels) = (
        naming.bn_epsilon,
        naming.preprocessing,
        options.labels.clone(),
    );
    ModelFile::new(config, eps, pre, labels, tensors, path)
}
