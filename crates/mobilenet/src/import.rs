//! Converting other weight files into our model format, with explicit name mapping.
//!
//! Supported sources (detected from the tensor names):
//! - **TF-slim** (`MobilenetV1/Conv2d_0/weights`, …): Google's checkpoints as safetensors, as in
//!   `../shared/data/mobilenet_v1/float/`. 1001 classes (index 0 = background), TF SAME
//!   padding, ReLU6, BN ε 1e-3, input `x/127.5 − 1`.
//! - **Keras** (`conv1.kernel`, `conv_dw_1.depthwise_kernel`, …, `conv_preds.kernel`): the
//!   layout `keras.applications.MobileNet` saves (used by the peer benchmark's models).
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
        if let Some(labels) = &options.labels {
            model.labels = Some(labels.clone());
        }
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
        if let Some(labels) = &options.labels {
            model.labels = Some(labels.clone());
        }
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
    } else {
        return Err(ModelError::Metadata {
            path: path.to_path_buf(),
            reason: "unrecognised weight names: expected TF-slim (MobilenetV1/...), Keras \
                     (conv1.kernel, ...) or a mobilenet model file"
                .to_string(),
        });
    };
    let mut model = match format {
        // The tensors already read, not a second parse: a second copy of the weights would
        // raise the peak memory of every command that loads a model (53 vs 41 MB at 1.0-224).
        SourceFormat::Native => ModelFile::from_parts(tensors, &metadata, path)?,
        SourceFormat::TfSlim => convert(path, tensors, &TF_SLIM, options)?,
        SourceFormat::Keras => convert(path, tensors, &KERAS, options)?,
        SourceFormat::Tflite | SourceFormat::Onnx => unreachable!("returned above"),
    };
    if let Some(labels) = &options.labels {
        model.labels = Some(labels.clone());
    }
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
    padding: Padding,
    activation: Activation,
    preprocessing: Preprocessing,
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
    padding: Padding::TfSame,
    activation: Activation::Relu6,
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
    padding: Padding::TfSame,
    activation: Activation::Relu6,
    preprocessing: Preprocessing {
        crop: 0.875,
        norm: PixelNorm::MinusOneToOne,
    },
};

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
    let width = *last.shape.last().unwrap_or(&0);
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
    let classes = *fc.shape.last().unwrap_or(&0);
    let resolution = options.resolution.unwrap_or(224);
    let config = MobileNetConfig::new(alpha, resolution)
        .and_then(|c| c.with_classes(classes))
        .map_err(|source| ModelError::Config {
            path: path.to_path_buf(),
            source,
        })?
        .with_padding(naming.padding)
        .with_activation(naming.activation);
    if source.get(naming.stem).map(|t| t.shape.last().copied()) != Some(Some(config.depth(32))) {
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
        if t.data.len() != count {
            return Err(ModelError::Shape {
                path: path.to_path_buf(),
                name: from.to_string(),
                expected: shape,
                found: t.shape,
            });
        }
        // Only unit dimensions differ between the source layout and ours
        // ([1,1,cin,cout] → [cin,cout], [3,3,c,1] → [3,3,c]); check the rest match.
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        if squeeze(&t.shape) != squeeze(&shape) {
            return Err(ModelError::Shape {
                path: path.to_path_buf(),
                name: from.to_string(),
                expected: shape,
                found: t.shape,
            });
        }
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
        DEFAULT_BN_EPSILON,
        naming.preprocessing,
        options.labels.clone(),
    );
    ModelFile::new(config, eps, pre, labels, tensors, path)
}
