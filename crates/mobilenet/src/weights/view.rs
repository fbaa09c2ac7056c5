//! Tensor names, built in one place, and typed views of a layer's weights.
//!
//! Everything that reads or writes a [`ModelFile`]'s tensors by layer (the f32 engine, the
//! trainer, post-training quantization, the importers, fine-tuning) goes through these
//! functions instead of formatting names itself.

use std::path::Path;

use crate::error::ModelError;
use crate::layers::{Layer, LayerKind};

use super::{ModelFile, Tensor};

/// The four batch-norm tensors after every convolution, in their file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnTensor {
    /// Scale γ.
    Gamma,
    /// Shift β.
    Beta,
    /// Moving mean (updated in training, used in inference).
    MovingMean,
    /// Moving variance.
    MovingVariance,
}

impl BnTensor {
    /// All four, in file order.
    pub const ALL: [BnTensor; 4] = [
        BnTensor::Gamma,
        BnTensor::Beta,
        BnTensor::MovingMean,
        BnTensor::MovingVariance,
    ];

    /// The name's last component (`gamma`, `beta`, `moving_mean`, `moving_variance`).
    pub fn leaf(self) -> &'static str {
        match self {
            BnTensor::Gamma => "gamma",
            BnTensor::Beta => "beta",
            BnTensor::MovingMean => "moving_mean",
            BnTensor::MovingVariance => "moving_variance",
        }
    }
}

/// Tensor names of the layer table's layers.
pub mod names {
    use super::BnTensor;

    /// The classifier's weight `[cin, classes]`.
    pub const FC_WEIGHT: &str = "fc/weight";
    /// The classifier's bias `[classes]`.
    pub const FC_BIAS: &str = "fc/bias";

    /// A layer's weight (`conv_1/depthwise/weight`; `fc/weight` for the classifier).
    pub fn weight(layer: &str) -> String {
        format!("{layer}/weight")
    }

    /// A layer's bias (optional before batch norm; `fc/bias` for the classifier).
    pub fn bias(layer: &str) -> String {
        format!("{layer}/bias")
    }

    /// One of a layer's batch-norm tensors (`conv_0/bn/gamma`).
    pub fn bn(layer: &str, t: BnTensor) -> String {
        format!("{layer}/bn/{}", t.leaf())
    }
}

/// The batch norm after a convolution.
#[derive(Clone, Copy, Debug)]
pub struct BnWeights<'a> {
    /// Scale γ.
    pub gamma: &'a [f32],
    /// Shift β.
    pub beta: &'a [f32],
    /// Moving mean.
    pub mean: &'a [f32],
    /// Moving variance.
    pub variance: &'a [f32],
}

/// A convolution's weights (stem, depthwise or pointwise) and the batch norm after it.
#[derive(Clone, Copy, Debug)]
pub struct ConvWeights<'a> {
    /// `[k, k, cin, cout]`, `[3, 3, c]` or `[cin, cout]`.
    pub weight: &'a [f32],
    /// Conv bias, added before batch norm (Keras-style files; usually absent).
    pub bias: Option<&'a [f32]>,
    /// The batch norm.
    pub bn: BnWeights<'a>,
}

/// The classifier's weights.
#[derive(Clone, Copy, Debug)]
pub struct FcWeights<'a> {
    /// `[cin, classes]`.
    pub weight: &'a [f32],
    /// `[classes]`.
    pub bias: &'a [f32],
}

impl ConvWeights<'_> {
    /// Batch norm folded into per-output-channel `(scale, bias)` with epsilon `eps`:
    /// `scale = γ / √(σ² + ε)`, `bias = β + (b − μ)·scale` (in f64, rounded once).
    pub fn folded_bn(&self, eps: f32) -> (Vec<f32>, Vec<f32>) {
        let BnWeights {
            gamma,
            beta,
            mean,
            variance,
        } = self.bn;
        let eps = eps as f64;
        let mut scale = Vec::with_capacity(gamma.len());
        let mut bias = Vec::with_capacity(gamma.len());
        for c in 0..gamma.len() {
            let s = gamma[c] as f64 / (variance[c] as f64 + eps).sqrt();
            let b0 = self.bias.map_or(0.0, |b| b[c] as f64);
            scale.push(s as f32);
            bias.push((beta[c] as f64 + (b0 - mean[c] as f64) * s) as f32);
        }
        (scale, bias)
    }
}

impl ModelFile {
    fn values(&self, name: &str, len: usize) -> Result<&[f32], ModelError> {
        match self.tensors.get(name) {
            Some(t) if t.data.len() == len => Ok(&t.data),
            Some(t) => Err(ModelError::Metadata {
                path: "<model>".into(),
                reason: format!(
                    "tensor \"{name}\" has {} values, the layer table needs {len}",
                    t.data.len()
                ),
            }),
            None => Err(ModelError::Metadata {
                path: "<model>".into(),
                reason: format!("tensor \"{name}\" is missing"),
            }),
        }
    }

    /// The weights of a convolution of the layer table (`Conv`, `Depthwise` or `Pointwise`).
    ///
    /// # Errors
    ///
    /// A tensor that is missing or of the wrong size (a file that skipped [`ModelFile::validate`]),
    /// or a layer that is not a convolution.
    pub fn conv(&self, layer: &Layer) -> Result<ConvWeights<'_>, ModelError> {
        let [_, _, cin] = layer.input;
        let cout = layer.output[2];
        let k = layer.kernel;
        let len = match layer.kind {
            LayerKind::Conv => k * k * cin * cout,
            LayerKind::Depthwise => k * k * cin,
            LayerKind::Pointwise => cin * cout,
            LayerKind::AvgPool | LayerKind::Fc => {
                return Err(ModelError::Metadata {
                    path: "<model>".into(),
                    reason: format!("layer {} is not a convolution", layer.name),
                })
            }
        };
        let bn = |t| self.values(&names::bn(&layer.name, t), cout);
        Ok(ConvWeights {
            weight: self.values(&names::weight(&layer.name), len)?,
            bias: match self.tensors.get(&names::bias(&layer.name)) {
                Some(_) => Some(self.values(&names::bias(&layer.name), cout)?),
                None => None,
            },
            bn: BnWeights {
                gamma: bn(BnTensor::Gamma)?,
                beta: bn(BnTensor::Beta)?,
                mean: bn(BnTensor::MovingMean)?,
                variance: bn(BnTensor::MovingVariance)?,
            },
        })
    }

    /// The classifier's weights (`layer` is the table's `Fc` layer).
    ///
    /// # Errors
    ///
    /// A tensor that is missing or of the wrong size.
    pub fn fc(&self, layer: &Layer) -> Result<FcWeights<'_>, ModelError> {
        let (cin, classes) = (layer.input[2], layer.output[2]);
        Ok(FcWeights {
            weight: self.values(names::FC_WEIGHT, cin * classes)?,
            bias: self.values(names::FC_BIAS, classes)?,
        })
    }

    /// Fine-tuning's weight transfer: takes every tensor of `init` (read from `path`) that this
    /// model's layer table has with the same shape, and returns how many it took. The
    /// classifier may differ (another class count: it keeps its own fresh weights); any other
    /// shape difference is an error (another α, stem or variant).
    ///
    /// # Errors
    ///
    /// A tensor outside the classifier whose shape differs.
    pub fn transfer_from(&mut self, init: &ModelFile, path: &Path) -> Result<usize, ModelError> {
        let mut kept = 0;
        for spec in super::tensor_specs(&self.config) {
            let Some(t) = init.tensors.get(&spec.name) else {
                continue;
            };
            if t.shape == spec.shape {
                self.tensors.insert(spec.name, t.clone());
                kept += 1;
            } else if spec.name != names::FC_WEIGHT && spec.name != names::FC_BIAS {
                return Err(ModelError::Metadata {
                    path: path.to_path_buf(),
                    reason: format!(
                        "tensor {:?} has shape {:?}, the new model needs {:?} (same α?)",
                        spec.name, t.shape, spec.shape
                    ),
                });
            }
        }
        Ok(kept)
    }

    /// Puts a tensor in without checks: the trainer writing back the weights it read through
    /// the views (same names, same shapes).
    pub(crate) fn insert_tensor(&mut self, name: String, tensor: Tensor) {
        self.tensors.insert(name, tensor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MobileNetConfig;

    #[test]
    fn views_name_the_missing_tensor() {
        let config = MobileNetConfig::new(0.25, 32).expect("config");
        let mut m = ModelFile::random(config, 1);
        let layers = config.layers();
        let conv = m.conv(&layers[1]).expect("complete model");
        assert_eq!(conv.weight.len(), 9 * 8);
        m.tensors.remove("conv_1/depthwise/bn/beta");
        let err = m.conv(&layers[1]).unwrap_err().to_string();
        assert!(
            err.contains("\"conv_1/depthwise/bn/beta\" is missing"),
            "{err}"
        );
        assert!(m.fc(&layers[0]).is_err());
    }

    #[test]
    fn transfer_keeps_the_body_and_refuses_another_width() {
        let ten = MobileNetConfig::new(0.25, 32).and_then(|c| c.with_classes(10));
        let five = MobileNetConfig::new(0.25, 32).and_then(|c| c.with_classes(5));
        let (ten, five) = (ten.expect("config"), five.expect("config"));
        let init = ModelFile::random(ten, 1);
        let mut model = ModelFile::random(five, 2);
        let kept = model
            .transfer_from(&init, Path::new("init"))
            .expect("same α");
        // Every tensor but the classifier's two.
        assert_eq!(kept, init.tensors.len() - 2);
        assert_eq!(
            model.tensors["conv_0/weight"],
            init.tensors["conv_0/weight"]
        );
        assert_ne!(
            model.tensors["fc/bias"].shape,
            init.tensors["fc/bias"].shape
        );
        let wide = ModelFile::random(MobileNetConfig::new(0.5, 32).expect("config"), 3);
        let err = model.transfer_from(&wide, Path::new("wide")).unwrap_err();
        assert!(err.to_string().contains("same α?"), "{err}");
    }
}
