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
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Activation, MobileNetConfig, Padding, Stem, Variant};
use crate::error::ModelError;
use crate::layers::LayerKind;
use crate::preprocess::Preprocessing;

mod file;
mod init;
mod view;

pub(crate) use file::read_safetensors;
pub use file::{write_atomic, WithExtras};
pub use init::WeightInit;
pub use view::{names, BnTensor, BnWeights, ConvWeights, FcWeights};

/// Adds the bias of a layer whose batch norm is folded into its weights (an imported `.tflite`
/// or ONNX graph), and that layer's batch norm as the identity (γ 1, β 0, mean 0, variance 1,
/// with the file's ε 0).
pub(crate) fn insert_folded_bias(
    tensors: &mut BTreeMap<String, Tensor>,
    layer: &str,
    bias: Vec<f32>,
) {
    let n = bias.len();
    tensors.insert(names::bias(layer), Tensor::new(vec![n], bias));
    for (t, value) in [
        (BnTensor::Gamma, 1.0),
        (BnTensor::Beta, 0.0),
        (BnTensor::MovingMean, 0.0),
        (BnTensor::MovingVariance, 1.0),
    ] {
        tensors.insert(names::bn(layer, t), Tensor::new(vec![n], vec![value; n]));
    }
}

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
    /// Weights by name (see [`tensor_specs`]): private, so that only [`ModelFile::new`], the
    /// readers and the trainer (writing back what it read through the views) put tensors in.
    tensors: BTreeMap<String, Tensor>,
}

impl ModelFile {
    /// The same network without its classifier: its output is the pooled features.
    pub fn backbone(&self) -> ModelFile {
        let tensors = self
            .tensors
            .iter()
            .filter(|(name, _)| !name.starts_with("fc/"))
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        ModelFile {
            config: self.config.without_head(),
            bn_epsilon: self.bn_epsilon,
            preprocessing: self.preprocessing,
            labels: None,
            tensors,
        }
    }

    /// A model from its parts, checked as [`ModelFile::validate`] checks a file (`path` names
    /// it in messages).
    ///
    /// # Errors
    ///
    /// A missing, extra, mis-shaped or non-finite tensor; labels that do not match the
    /// classes; an invalid epsilon.
    pub fn new(
        config: MobileNetConfig,
        bn_epsilon: f32,
        preprocessing: Preprocessing,
        labels: Option<Vec<String>>,
        tensors: BTreeMap<String, Tensor>,
        path: &Path,
    ) -> Result<ModelFile, ModelError> {
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

    /// The weights by name.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// One weight by name.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The values of every weight, to change in place (shapes stay as they are).
    pub fn tensor_values_mut(&mut self) -> impl Iterator<Item = (&str, &mut [f32])> {
        self.tensors
            .iter_mut()
            .map(|(name, t)| (name.as_str(), t.data.as_mut_slice()))
    }

    /// The same model without its weights: what a trainer fills in again.
    pub(crate) fn without_tensors(&self) -> ModelFile {
        ModelFile {
            config: self.config,
            bn_epsilon: self.bn_epsilon,
            preprocessing: self.preprocessing,
            labels: self.labels.clone(),
            tensors: BTreeMap::new(),
        }
    }

    /// Checks that the tensors are exactly those the configuration needs, with the right
    /// shapes and finite values, and that the labels match the class count.
    pub fn validate(&self, path: &Path) -> Result<(), ModelError> {
        check_tensors(
            &tensor_specs(&self.config),
            &self.tensors,
            path,
            &self.config.to_string(),
        )?;
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
}

/// Checks that `tensors` are exactly those `specs` name (optional ones may be absent), with
/// their shapes, finite values and no negative variance; `owner` describes the network in
/// the message about a tensor it has no use for.
pub(crate) fn check_tensors(
    specs: &[TensorSpec],
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
    owner: &str,
) -> Result<(), ModelError> {
    for spec in specs {
        match tensors.get(&spec.name) {
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
                // A negative variance makes batch norm's square root NaN, which ReLU6
                // then hides as 0: a model that answers one class for every image.
                let variance = BnTensor::MovingVariance.leaf();
                if spec.name.ends_with(variance) {
                    if let Some(index) = t.data.iter().position(|&v| v < 0.0) {
                        return Err(ModelError::Metadata {
                            path: path.to_path_buf(),
                            reason: format!(
                                "tensor {:?} holds a negative variance ({}) at index {index}",
                                spec.name, t.data[index]
                            ),
                        });
                    }
                }
            }
        }
    }
    for name in tensors.keys() {
        if !specs.iter().any(|s| &s.name == name) {
            return Err(ModelError::UnexpectedTensor {
                path: path.to_path_buf(),
                name: name.clone(),
                config: owner.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

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
            "d.safetensors: tensor \"x\" has dtype F64, expected F32, F16 or BF16"
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
