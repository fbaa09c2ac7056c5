//! The detector file: a backbone model file plus the extra layers and predictors (tensors under
//! `ssd/`) and the [`DetectorConfig`] in the metadata key `detector`.
//!
//! | name | shape |
//! |---|---|
//! | the backbone's tensors (see [`crate::weights`]) | |
//! | `ssd/extra_<j>/reduce/weight` | `[cin, depth/2]` |
//! | `ssd/extra_<j>/conv/weight` | `[3, 3, depth/2, depth]` |
//! | `ssd/extra_<j>/{reduce,conv}/bias` (optional), `…/bn/{gamma,beta,moving_mean,moving_variance}` | `[cout]` |
//! | `ssd/head_<m>/box/weight`, `ssd/head_<m>/box/bias` | `[cin, 4·boxes]`, `[4·boxes]` |
//! | `ssd/head_<m>/class/weight`, `ssd/head_<m>/class/bias` | `[cin, classes·boxes]`, `[classes·boxes]` |
//!
//! Predictor channels are ordered box by box: channel `b·4 + k` is box `b`'s offset `k`
//! (`ty, tx, th, tw`), channel `b·classes + c` its logit for class `c`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::config::DetectorConfig;
use crate::error::ModelError;
use crate::layers::LayerKind;
use crate::preprocess::{PixelNorm, Preprocessing};
use crate::weights::{names, BnTensor, ModelFile, Tensor, TensorSpec};
use crate::Rng;

/// Prefix of the detector's own tensors in the file.
pub const PREFIX: &str = "ssd/";

/// A detector with the extra tensors and the metadata of its file
/// ([`DetectorFile::from_bytes_with`]).
pub type WithExtras = (
    DetectorFile,
    BTreeMap<String, Tensor>,
    HashMap<String, String>,
);

/// The metadata key of the detector's configuration.
const DETECTOR_KEY: &str = "detector";

/// A detector: its configuration, the backbone and the tensors of the extra layers and heads.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorFile {
    /// The detector.
    pub config: DetectorConfig,
    /// The MobileNet body (no classifier).
    pub backbone: ModelFile,
    /// Extra layers and predictors, names starting with [`PREFIX`].
    pub tensors: BTreeMap<String, Tensor>,
}

/// The file name of an extra layer's or head's tensor.
pub fn name(layer: &str, leaf: &str) -> String {
    format!("{PREFIX}{layer}/{leaf}")
}

/// Every tensor of the extra layers and heads.
///
/// # Errors
///
/// An invalid backbone configuration.
pub fn tensor_specs(config: &DetectorConfig) -> Result<Vec<TensorSpec>, ModelError> {
    let bad = |source| ModelError::Config {
        path: "<detector>".into(),
        source,
    };
    let body = config.backbone().map_err(bad)?;
    let last = body.feature_shape();
    let spec = |name: String, shape: Vec<usize>, optional: bool| TensorSpec {
        name,
        shape,
        optional,
    };
    let mut specs = Vec::new();
    for layer in config.extra_layers(last) {
        let (cin, cout) = (layer.input[2], layer.output[2]);
        let shape = match layer.kind {
            LayerKind::Conv => vec![layer.kernel, layer.kernel, cin, cout],
            _ => vec![cin, cout],
        };
        let full = format!("{PREFIX}{}", layer.name);
        specs.push(spec(names::weight(&full), shape, false));
        specs.push(spec(names::bias(&full), vec![cout], true));
        for t in BnTensor::ALL {
            specs.push(spec(names::bn(&full, t), vec![cout], false));
        }
    }
    for (m, shape) in config.map_shapes().map_err(bad)?.into_iter().enumerate() {
        let cin = shape[2];
        let (boxes, classes) = config.head_channels(m);
        for (part, cout) in [("box", boxes), ("class", classes)] {
            let layer = format!("head_{m}/{part}");
            specs.push(spec(name(&layer, "weight"), vec![cin, cout], false));
            specs.push(spec(name(&layer, "bias"), vec![cout], false));
        }
    }
    Ok(specs)
}

impl DetectorFile {
    /// A detector from its parts, checked.
    ///
    /// # Errors
    ///
    /// An invalid configuration, a backbone that is not the configuration's, a missing, extra,
    /// mis-shaped or non-finite tensor.
    pub fn new(
        config: DetectorConfig,
        backbone: ModelFile,
        tensors: BTreeMap<String, Tensor>,
        path: &Path,
    ) -> Result<DetectorFile, ModelError> {
        let bad = |reason: String| ModelError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        config
            .validate()
            .map_err(|e| bad(format!("invalid detector: {e}")))?;
        let want = config.backbone().map_err(|source| ModelError::Config {
            path: path.to_path_buf(),
            source,
        })?;
        if backbone.config != want {
            return Err(bad(format!(
                "the backbone is {}, the detector needs {want}",
                backbone.config
            )));
        }
        let owner = format!("detector {:?}", config.name);
        crate::weights::check_tensors(&tensor_specs(&config)?, &tensors, path, &owner)?;
        Ok(DetectorFile {
            config,
            backbone,
            tensors,
        })
    }

    /// The preprocessing stored with the backbone (the detector's own fit and normalisation
    /// are in its configuration).
    pub fn backbone_preprocessing() -> Preprocessing {
        Preprocessing {
            crop: 1.0,
            norm: PixelNorm::MinusOneToOne,
        }
    }

    /// Seeded random weights for `config` (batch norm the identity, predictors small): for
    /// tests, benchmarks and training from scratch.
    ///
    /// # Errors
    ///
    /// An invalid configuration.
    pub fn random(config: DetectorConfig, seed: u64) -> Result<DetectorFile, ModelError> {
        let body = config.backbone().map_err(|source| ModelError::Config {
            path: "<detector>".into(),
            source,
        })?;
        let mut backbone = ModelFile::random(body, seed);
        backbone.preprocessing = DetectorFile::backbone_preprocessing();
        let mut rng = Rng::new(seed ^ 0x55d);
        let mut tensors = BTreeMap::new();
        for spec in tensor_specs(&config)? {
            if spec.optional {
                continue;
            }
            let n: usize = spec.shape.iter().product();
            let leaf = spec.name.rsplit('/').next().unwrap_or("");
            let data = match leaf {
                "gamma" | "moving_variance" => vec![1.0; n],
                "beta" | "moving_mean" | "bias" => vec![0.0; n],
                // Predictors start small, N(0, 0.03²) as the Object Detection API's SSD
                // configs have it: He-scaled logits made the first steps' class loss ~30.
                _ if spec.name.contains("/head_") => (0..n).map(|_| 0.03 * rng.normal()).collect(),
                _ => {
                    let fan_in = n / spec.shape.last().copied().unwrap_or(1);
                    let a = (6.0 / fan_in.max(1) as f32).sqrt();
                    (0..n).map(|_| a * rng.signed()).collect()
                }
            };
            tensors.insert(spec.name, Tensor::new(spec.shape, data));
        }
        DetectorFile::new(config, backbone, tensors, Path::new("<random>"))
    }

    /// A new detector for `config` whose backbone is `init`'s body (a classifier or backbone
    /// file of the same α: an ImageNet model), the extra layers and predictors seeded random.
    ///
    /// # Errors
    ///
    /// `init`'s body does not fit the configuration (another α), or an invalid configuration.
    pub fn from_backbone(
        config: DetectorConfig,
        init: &ModelFile,
        seed: u64,
    ) -> Result<DetectorFile, ModelError> {
        let random = DetectorFile::random(config.clone(), seed)?;
        let body = random.backbone.config;
        let tensors = init
            .tensors()
            .iter()
            .filter(|(name, _)| !name.starts_with("fc/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let path = Path::new("<init>");
        let backbone = ModelFile::new(
            body,
            init.bn_epsilon,
            DetectorFile::backbone_preprocessing(),
            None,
            tensors,
            path,
        )
        .map_err(|e| ModelError::Metadata {
            path: path.to_path_buf(),
            reason: format!(
                "the initial weights ({}) are not a backbone for this detector ({body}): {e}",
                init.config
            ),
        })?;
        DetectorFile::new(config, backbone, random.tensors, path)
    }

    /// Reads a detector file.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not a safetensors file, is a classifier, or fails the
    /// checks of [`DetectorFile::new`].
    pub fn load(path: &Path) -> Result<DetectorFile, ModelError> {
        let bytes = crate::files::read_regular(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        DetectorFile::from_bytes(&bytes, path)
    }

    /// Parses a detector file held in memory (`path` names it in messages).
    ///
    /// # Errors
    ///
    /// As [`DetectorFile::load`]; tensors of neither the backbone nor the detector.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<DetectorFile, ModelError> {
        Ok(DetectorFile::from_bytes_with(bytes, path, None)?.0)
    }

    /// As [`DetectorFile::from_bytes`], also returning the tensors whose names start with
    /// `extra_prefix` (a checkpoint's optimiser state) and the metadata.
    ///
    /// # Errors
    ///
    /// As [`DetectorFile::from_bytes`].
    pub fn from_bytes_with(
        bytes: &[u8],
        path: &Path,
        extra_prefix: Option<&str>,
    ) -> Result<WithExtras, ModelError> {
        let (all, metadata) = crate::weights::read_safetensors(bytes, path)?;
        let (mut body, mut ssd, mut extra) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (name, t) in all {
            if name.starts_with(PREFIX) {
                ssd.insert(name, t);
            } else if extra_prefix.is_some_and(|p| name.starts_with(p)) {
                extra.insert(name, t);
            } else {
                body.insert(name, t);
            }
        }
        let text = metadata
            .get(DETECTOR_KEY)
            .ok_or_else(|| ModelError::Metadata {
                path: path.to_path_buf(),
                reason: "no \"detector\" in the metadata: a classifier, not a detector \
                         (`mobilenet import` converts face-api's SSD)"
                    .into(),
            })?;
        let config: DetectorConfig =
            serde_json::from_str(text).map_err(|e| ModelError::Metadata {
                path: path.to_path_buf(),
                reason: format!("invalid detector metadata: {e}"),
            })?;
        let backbone = ModelFile::from_parts(body, &metadata, path)?;
        Ok((
            DetectorFile::new(config, backbone, ssd, path)?,
            extra,
            metadata,
        ))
    }

    /// The file's bytes.
    ///
    /// # Errors
    ///
    /// Serialisation failed (not expected for a checked detector).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        self.to_bytes_with(&BTreeMap::new(), HashMap::new())
    }

    /// The file's bytes with `extra` tensors and metadata (a checkpoint's optimiser state and
    /// position); [`DetectorFile::from_bytes_with`] reads them back.
    ///
    /// # Errors
    ///
    /// As [`DetectorFile::to_bytes`].
    pub fn to_bytes_with(
        &self,
        extra: &BTreeMap<String, Tensor>,
        mut metadata: HashMap<String, String>,
    ) -> Result<Vec<u8>, ModelError> {
        let json = serde_json::to_string(&self.config).map_err(|e| ModelError::Metadata {
            path: "<detector>".into(),
            reason: e.to_string(),
        })?;
        metadata.insert(DETECTOR_KEY.to_string(), json);
        let mut tensors = self.tensors.clone();
        tensors.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.backbone.to_bytes_with(&tensors, metadata)
    }

    /// Writes the detector atomically (see [`crate::weights::write_atomic`]).
    ///
    /// # Errors
    ///
    /// As [`DetectorFile::to_bytes`], or the write failed.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        crate::weights::write_atomic(path, &self.to_bytes()?)
    }
}

/// Whether a safetensors file's metadata says it is a detector (cheap: reads the header only).
pub fn is_detector(bytes: &[u8]) -> bool {
    safetensors::SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().as_ref().map(|m| m.contains_key(DETECTOR_KEY)))
        .unwrap_or(false)
}

/// Whether the file at `path` is a detector: a detector file (reads its safetensors header
/// only) or an int8 `.tflite` detector. False for anything unreadable, which the real load
/// then reports.
pub fn is_detector_file(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return false;
    }
    if &len[4..8] == b"TFL3" {
        let mut bytes = len.to_vec();
        return f.read_to_end(&mut bytes).is_ok() && super::quant::is_quantized_detector(&bytes);
    }
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return false;
    }
    let mut header = vec![0u8; n as usize];
    if f.read_exact(&mut header).is_err() {
        return false;
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&header) else {
        return false;
    };
    json.get("__metadata__")
        .and_then(|m| m.get(DETECTOR_KEY))
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_tensors() {
        let mut config = DetectorConfig::face_api();
        config.input = 64;
        let file = DetectorFile::random(config, 3).expect("should succeed");
        let bytes = file.to_bytes().expect("should succeed");
        assert!(is_detector(&bytes));
        let back =
            DetectorFile::from_bytes(&bytes, Path::new("d.safetensors")).expect("should succeed");
        assert_eq!(back, file);
        // A classifier is refused with a clear message.
        let classifier = file.backbone.to_bytes().expect("should succeed");
        assert!(!is_detector(&classifier));
        let err = DetectorFile::from_bytes(&classifier, Path::new("c.safetensors"))
            .expect_err("should fail");
        assert!(err.to_string().contains("not a detector"), "{err}");
        // A mis-shaped predictor is named.
        let mut tensors = file.tensors.clone();
        let key = name("head_2/class", "bias");
        tensors.insert(key.clone(), Tensor::new(vec![5], vec![0.0; 5]));
        let err = DetectorFile::new(
            file.config.clone(),
            file.backbone.clone(),
            tensors,
            Path::new("x"),
        )
        .expect_err("should fail");
        assert!(err.to_string().contains(&key), "{err}");
    }
}
