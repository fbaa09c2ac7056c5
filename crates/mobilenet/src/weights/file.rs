//! Reading and writing model files: safetensors with the configuration, epsilon,
//! preprocessing and labels in the metadata; atomic writes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;

use super::{ConfigJson, ModelFile, Tensor, FORMAT, FORMAT_VERSION};
use crate::error::ModelError;
use crate::preprocess::Preprocessing;

impl ModelFile {
    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<ModelFile, ModelError> {
        let bytes = crate::files::read_regular(path).map_err(|source| ModelError::Io {
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
        ModelFile::new(config, bn_epsilon, preprocessing, labels, tensors, path)
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
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            // Half-precision state dicts (`model.half()`, bf16 training) widen exactly.
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            // PyTorch's batch-norm step counter: state, not a weight; nothing reads it.
            Dtype::I64 if name.ends_with(".num_batches_tracked") => continue,
            other => {
                return Err(ModelError::Dtype {
                    path: path.to_path_buf(),
                    name,
                    found: format!("{other:?}"),
                })
            }
        };
        tensors.insert(name, Tensor::new(view.shape().to_vec(), data));
    }
    Ok((tensors, metadata))
}

/// Metadata values are plain data (numbers, strings, enums), which always serialise.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
