//! The model file: safetensors with our layer-table names and the configuration, bn epsilon,
//! preprocessing and class labels in the metadata, so that a file is all `classify` needs.
//!
//! Tensors (all f32, unfolded: batch norm is folded when the model is loaded for inference):
//!
//! | name | shape |
//! |---|---|
//! | `conv_0/weight` (and full-conv `conv_<i>/weight`) | `[3, 3, cin, cout]` (HWIO) |
//! | `conv_<i>/depthwise/weight` | `[3, 3, c]` |
//! | `conv_<i>/pointwise/weight` | `[cin, cout]` |
//! | `<layer>/bias` (optional) | `[cout]`, added before batch norm |
//! | `<layer>/bn/{gamma,beta,moving_mean,moving_variance}` | `[cout]` |
//! | `fc/weight`, `fc/bias` | `[cin, classes]`, `[classes]` |

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::config::{Activation, MobileNetConfig, Padding, Stem, Variant};
use crate::error::ModelError;
use crate::layers::LayerKind;
use crate::preprocess::Preprocessing;

mod init;
mod view;

pub use init::WeightInit;
pub use view::{names, BnTensor, BnWeights, ConvWeights, FcWeights};

/// Value of the `format` metadata key.
pub const FORMAT: &str = "mobilenet-v1";
/// Version of the file layout; bumped when names or layouts change.
pub const FORMAT_VERSION: u32 = 1;
/// TF-slim's batch-norm epsilon.
pub const DEFAULT_BN_EPSILON: f32 = 1e-3;

/// A dense f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from its shape and values.
    ///
    /// # Panics
    ///
    /// If the number of values does not match the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor shape/data mismatch"
        );
        Tensor { shape, data }
    }
}

/// One weight the network needs: name, shape, and whether it may be absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the model file.
    pub name: String,
    /// Required shape.
    pub shape: Vec<usize>,
    /// Conv biases are optional (batch norm makes them redundant); everything else is required.
    pub optional: bool,
}

/// Every tensor a configuration's model file holds, derived from the layer table.
pub fn tensor_specs(config: &MobileNetConfig) -> Vec<TensorSpec> {
    let mut specs = Vec::new();
    let spec = |name: String, shape: Vec<usize>, optional: bool| TensorSpec {
        name,
        shape,
        optional,
    };
    for layer in config.layers() {
        let [_, _, cin] = layer.input;
        let cout = layer.output[2];
        let k = layer.kernel;
        let weight = match layer.kind {
            LayerKind::Conv => vec![k, k, cin, cout],
            LayerKind::Depthwise => vec![k, k, cin],
            LayerKind::Pointwise => vec![cin, cout],
            LayerKind::Fc => {
                specs.push(spec(names::FC_WEIGHT.into(), vec![cin, cout], false));
                specs.push(spec(names::FC_BIAS.into(), vec![cout], false));
                continue;
            }
            LayerKind::AvgPool => continue,
        };
        specs.push(spec(names::weight(&layer.name), weight, false));
        specs.push(spec(names::bias(&layer.name), vec![cout], true));
        for t in BnTensor::ALL {
            specs.push(spec(names::bn(&layer.name, t), vec![cout], false));
        }
    }
    specs
}

/// The configuration as stored in the metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ConfigJson {
    alpha: f64,
    resolution: usize,
    classes: Option<usize>,
    dropout: f64,
    min_depth: usize,
    activation: Activation,
    padding: Padding,
    variant: Variant,
    #[serde(default)]
    stem: Stem,
}

impl ConfigJson {
    fn from_config(c: &MobileNetConfig) -> ConfigJson {
        ConfigJson {
            alpha: c.alpha(),
            resolution: c.resolution(),
            classes: c.classes(),
            dropout: c
                .head()
                .map_or(crate::config::DEFAULT_DROPOUT, |h| h.dropout),
            min_depth: c.min_depth(),
            activation: c.activation(),
            padding: c.padding(),
            variant: c.variant(),
            stem: c.stem(),
        }
    }

    fn to_config(&self) -> Result<MobileNetConfig, crate::ConfigError> {
        let mut c = MobileNetConfig::new(self.alpha, self.resolution)?
            .with_min_depth(self.min_depth)?
            .with_activation(self.activation)
            .with_padding(self.padding)
            .with_variant(self.variant)
            .with_stem(self.stem);
        c = match self.classes {
            Some(n) => c.with_classes(n)?.with_dropout(self.dropout)?,
            None => c.without_head(),
        };
        Ok(c)
    }
}

/// A complete model: configuration, conventions, labels and weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    /// The network.
    pub config: MobileNetConfig,
    /// Batch-norm epsilon.
    pub bn_epsilon: f32,
    /// What to do to an image before the network.
    pub preprocessing: Preprocessing,
    /// One label per output class (index 0 is "background" in Google's 1001-class models).
    pub labels: Option<Vec<String>>,
    /// Weights by name (see [`tensor_specs`]).
    pub tensors: BTreeMap<String, Tensor>,
}

impl ModelFile {
    /// Checks that the tensors are exactly those the configuration needs, with the right
    /// shapes and finite values, and that the labels match the class count.
    pub fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let specs = tensor_specs(&self.config);
        for spec in &specs {
            match self.tensors.get(&spec.name) {
                None if spec.optional => {}
                None => {
                    return Err(ModelError::MissingTensor {
                        path: path.to_path_buf(),
                        name: spec.name.clone(),
                        shape: spec.shape.clone(),
                    })
                }
                Some(t) if t.shape != spec.shape => {
                    return Err(ModelError::Shape {
                        path: path.to_path_buf(),
                        name: spec.name.clone(),
                        expected: spec.shape.clone(),
                        found: t.shape.clone(),
                    })
                }
                Some(t) => {
                    if let Some(index) = t.data.iter().position(|v| !v.is_finite()) {
                        return Err(ModelError::NonFinite {
                            path: path.to_path_buf(),
                            name: spec.name.clone(),
                            index,
                        });
                    }
                }
            }
        }
        for name in self.tensors.keys() {
            if !specs.iter().any(|s| &s.name == name) {
                return Err(ModelError::UnexpectedTensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    config: self.config.to_string(),
                });
            }
        }
        if let (Some(labels), Some(classes)) = (&self.labels, self.config.classes()) {
            if labels.len() != classes {
                return Err(ModelError::Metadata {
                    path: path.to_path_buf(),
                    reason: format!("{} labels for {classes} classes", labels.len()),
                });
            }
        }
        if !(self.bn_epsilon.is_finite() && self.bn_epsilon >= 0.0) {
            return Err(ModelError::Metadata {
                path: path.to_path_buf(),
                reason: format!("invalid bn_epsilon {}", self.bn_epsilon),
            });
        }
        Ok(())
    }

    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<ModelFile, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ModelFile::from_bytes(&bytes, path)
    }

    /// Parses and validates a model file held in memory (`path` is used in messages).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<ModelFile, ModelError> {
        let (tensors, metadata) = read_safetensors(bytes, path)?;
        ModelFile::from_parts(tensors, &metadata, path)
    }

    /// Parses a model file with extra tensors (names starting with `extra_prefix`) and returns
    /// them and the metadata as well: the reading side of [`ModelFile::to_bytes_with`].
    pub fn from_bytes_with(
        bytes: &[u8],
        path: &Path,
        extra_prefix: &str,
    ) -> Result<WithExtras, ModelError> {
        let (mut tensors, metadata) = read_safetensors(bytes, path)?;
        let extra_names: Vec<String> = tensors
            .keys()
            .filter(|k| k.starts_with(extra_prefix))
            .cloned()
            .collect();
        let extra = extra_names
            .into_iter()
            .filter_map(|k| tensors.remove(&k).map(|t| (k, t)))
            .collect();
        let model = ModelFile::from_parts(tensors, &metadata, path)?;
        Ok((model, extra, metadata))
    }

    pub(crate) fn from_parts(
        tensors: BTreeMap<String, Tensor>,
        metadata: &std::collections::HashMap<String, String>,
        path: &Path,
    ) -> Result<ModelFile, ModelError> {
        let meta = |key: &str| -> Result<&String, ModelError> {
            metadata.get(key).ok_or_else(|| ModelError::Metadata {
                path: path.to_path_buf(),
                reason: format!(
                    "no {key:?} in the metadata: not a mobilenet model file \
                     (use `mobilenet import` to convert other weights)"
                ),
            })
        };
        let bad = |reason: String| ModelError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        if meta("format")? != FORMAT {
            return Err(bad(format!(
                "format is {:?}, expected {FORMAT:?}",
                meta("format")?
            )));
        }
        let version: u32 = meta("format_version")?
            .parse()
            .map_err(|_| bad("format_version is not a number".into()))?;
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format_version {version} is not supported (this build reads {FORMAT_VERSION})"
            )));
        }
        let config: ConfigJson = serde_json::from_str(meta("config")?)
            .map_err(|e| bad(format!("invalid config metadata: {e}")))?;
        let config = config.to_config().map_err(|source| ModelError::Config {
            path: path.to_path_buf(),
            source,
        })?;
        let bn_epsilon: f32 = meta("bn_epsilon")?
            .parse()
            .map_err(|_| bad("bn_epsilon is not a number".into()))?;
        let preprocessing: Preprocessing = serde_json::from_str(meta("preprocessing")?)
            .map_err(|e| bad(format!("invalid preprocessing metadata: {e}")))?;
        let labels = match metadata.get("labels") {
            Some(text) => Some(
                serde_json::from_str::<Vec<String>>(text)
                    .map_err(|e| bad(format!("invalid labels metadata: {e}")))?,
            ),
            None => None,
        };
        let model = ModelFile {
            config,
            bn_epsilon,
            preprocessing,
            labels,
            tensors,
        };
        model.validate(path)?;
        Ok(model)
    }

    /// The safetensors bytes of this model.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        self.to_bytes_with(&BTreeMap::new(), std::collections::HashMap::new())
    }

    /// The safetensors bytes of this model plus `extra` tensors and metadata (a training
    /// checkpoint adds its optimiser state this way; [`ModelFile::from_bytes_with`] reads it).
    pub fn to_bytes_with(
        &self,
        extra: &BTreeMap<String, Tensor>,
        mut metadata: std::collections::HashMap<String, String>,
    ) -> Result<Vec<u8>, ModelError> {
        metadata.insert("format".to_string(), FORMAT.to_string());
        metadata.insert("format_version".to_string(), FORMAT_VERSION.to_string());
        metadata.insert(
            "config".to_string(),
            to_json(&ConfigJson::from_config(&self.config)),
        );
        metadata.insert("bn_epsilon".to_string(), self.bn_epsilon.to_string());
        metadata.insert("preprocessing".to_string(), to_json(&self.preprocessing));
        if let Some(labels) = &self.labels {
            metadata.insert("labels".to_string(), to_json(labels));
        }
        // Little-endian bytes of every tensor (a copy: the file is written once).
        let tensors: Vec<(&String, &Tensor, Vec<u8>)> = self
            .tensors
            .iter()
            .chain(extra.iter())
            .map(|(name, t)| {
                (
                    name,
                    t,
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, t, bytes)| {
                let name = *name;
                // The shape and byte length agree by construction of Tensor.
                let view = TensorView::new(Dtype::F32, t.shape.clone(), bytes).map_err(|e| {
                    ModelError::Format {
                        path: PathBuf::from(name),
                        reason: e.to_string(),
                    }
                })?;
                Ok((name.clone(), view))
            })
            .collect::<Result<_, ModelError>>()?;
        safetensors::serialize(views, Some(metadata)).map_err(|e| ModelError::Format {
            path: PathBuf::from("<memory>"),
            reason: e.to_string(),
        })
    }

    /// Writes the model atomically: to a temporary file beside `path`, synced, then renamed,
    /// so a crash leaves either the old file or the new one, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes)
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// A model file, the extra tensors stored with it, and the file's metadata.
pub type WithExtras = (
    ModelFile,
    BTreeMap<String, Tensor>,
    std::collections::HashMap<String, String>,
);

/// Tensors by name, and the string metadata of a safetensors file.
pub(crate) type RawSafetensors = (
    BTreeMap<String, Tensor>,
    std::collections::HashMap<String, String>,
);

/// Reads every tensor of a safetensors file as f32, with its metadata.
pub(crate) fn read_safetensors(bytes: &[u8], path: &Path) -> Result<RawSafetensors, ModelError> {
    let format = |e: safetensors::SafeTensorError| ModelError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(format)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).map_err(format)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(ModelError::Dtype {
                path: path.to_path_buf(),
                name,
                found: format!("{:?}", view.dtype()),
            });
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name, Tensor::new(view.shape().to_vec(), data));
    }
    Ok((tensors, metadata))
}

/// Metadata values are plain data (numbers, strings, enums), which always serialise.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ModelFile {
        let config = MobileNetConfig::new(0.25, 32)
            .unwrap()
            .with_classes(3)
            .unwrap();
        let mut m = ModelFile::random(config, 1);
        m.labels = Some(vec!["a".into(), "b".into(), "c".into()]);
        m
    }

    #[test]
    fn torch_init_draws_within_pytorchs_bounds() {
        // PyTorch's Conv2d/Linear defaults: U(±1/√fan_in) for weights and the Linear bias.
        let config = MobileNetConfig::new(0.5, 32)
            .unwrap()
            .with_classes(10)
            .unwrap();
        let m = ModelFile::random_with(config, 3, WeightInit::Torch);
        let he = ModelFile::random_with(config, 3, WeightInit::He);
        for (name, fan_in) in [
            ("conv_0/weight", 27),
            ("conv_1/depthwise/weight", 9),
            ("conv_1/pointwise/weight", 16),
            ("fc/weight", 512),
            ("fc/bias", 512),
        ] {
            let data = &m.tensors[name].data;
            let bound = 1.0 / (fan_in as f32).sqrt();
            let max = data.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert!(
                max <= bound && max > 0.9 * bound,
                "{name}: max |w| {max}, bound {bound}"
            );
        }
        // He-scaled weights are √6 times wider; its FC bias starts at zero.
        let ratio = he.tensors["fc/weight"].data[0] / m.tensors["fc/weight"].data[0];
        assert!((ratio - 6f32.sqrt()).abs() < 1e-4, "{ratio}");
        assert!(he.tensors["fc/bias"].data.iter().all(|&b| b == 0.0));
    }

    #[test]
    fn round_trip_through_bytes() {
        let m = small();
        let bytes = m.to_bytes().unwrap();
        let back = ModelFile::from_bytes(&bytes, Path::new("m.safetensors")).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = small().to_bytes().unwrap();
        for len in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
            let err = ModelFile::from_bytes(&bytes[..len], Path::new("t.safetensors")).unwrap_err();
            assert!(err.to_string().starts_with("t.safetensors: "), "{err}");
        }
    }

    #[test]
    fn wrong_shape_missing_and_extra_tensors_are_named() {
        let path = Path::new("m.safetensors");
        let mut m = small();
        m.tensors.insert(
            "conv_1/depthwise/weight".into(),
            Tensor::new(vec![3, 3, 9], vec![0.0; 81]),
        );
        let err = m.validate(path).unwrap_err().to_string();
        assert!(
            err.contains("\"conv_1/depthwise/weight\" has shape [3, 3, 9], expected [3, 3, 8]"),
            "{err}"
        );

        let mut m = small();
        m.tensors.remove("conv_5/pointwise/bn/gamma");
        let err = m.validate(path).unwrap_err().to_string();
        assert!(
            err.contains("missing tensor \"conv_5/pointwise/bn/gamma\""),
            "{err}"
        );

        let mut m = small();
        m.tensors
            .insert("conv_99/weight".into(), Tensor::new(vec![1], vec![0.0]));
        let err = m.validate(path).unwrap_err().to_string();
        assert!(
            err.contains("unexpected tensor \"conv_99/weight\""),
            "{err}"
        );

        let mut m = small();
        m.tensors.get_mut("fc/bias").unwrap().data[1] = f32::NAN;
        let err = m.validate(path).unwrap_err().to_string();
        assert!(
            err.contains("\"fc/bias\" holds a non-finite value at index 1"),
            "{err}"
        );

        let mut m = small();
        m.labels = Some(vec!["only one".into()]);
        assert!(m
            .validate(path)
            .unwrap_err()
            .to_string()
            .contains("1 labels for 3 classes"));
    }

    #[test]
    fn wrong_dtype_is_named() {
        let data = [0u8; 8];
        let view = TensorView::new(Dtype::F64, vec![1], &data).unwrap();
        let bytes = safetensors::serialize([("x", view)], None).unwrap();
        let err = ModelFile::from_bytes(&bytes, Path::new("d.safetensors")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "d.safetensors: tensor \"x\" has dtype F64, expected F32"
        );
    }

    #[test]
    fn foreign_safetensors_say_to_import() {
        let view = TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap();
        let bytes = safetensors::serialize([("x", view)], None).unwrap();
        let err = ModelFile::from_bytes(&bytes, Path::new("f.safetensors")).unwrap_err();
        assert!(err.to_string().contains("mobilenet import"), "{err}");
    }

    #[test]
    fn atomic_save_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("mobilenet-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let m = small();
        m.save(&path).unwrap();
        assert_eq!(ModelFile::load(&path).unwrap(), m);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
