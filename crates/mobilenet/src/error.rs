//! Errors of the `mobilenet` library. Each message names the value that was wrong.

use thiserror::Error;

/// An invalid model configuration.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConfigError {
    /// The width multiplier α is outside (0, 4] or not a finite number.
    #[error("width multiplier (alpha) {0} is out of range: it must be in (0, 4]")]
    Alpha(f64),
    /// The input resolution is below the smallest the network can take.
    #[error("input resolution {0} is too small: it must be at least 32")]
    Resolution(usize),
    /// The input resolution is unreasonably large (its activations would not fit in memory).
    #[error("input resolution {0} is too large: it must be at most 4096")]
    ResolutionTooLarge(usize),
    /// A classifier head with no classes.
    #[error("number of classes {0} is invalid: a classifier has 1 to {max} classes", max = crate::config::MAX_CLASSES)]
    Classes(usize),
    /// `min_depth` of zero would allow layers with no channels.
    #[error("min_depth {0} is invalid: it must be at least 1")]
    MinDepth(usize),
    /// A dropout rate outside [0, 1).
    #[error("dropout rate {0} is out of range: it must be in [0, 1)")]
    Dropout(f64),
    /// A preset name that does not parse as `<alpha>_<resolution>`.
    #[error(
        "unknown preset {0:?}: expected <alpha>_<resolution>, e.g. \"1.0_224\" or \"0.5_160\""
    )]
    Preset(String),
    /// A name that is not one of the known values of an enumerated option.
    #[error("unknown {what} {value:?}: expected one of {expected}")]
    UnknownName {
        /// Which option (e.g. "variant").
        what: &'static str,
        /// The value given.
        value: String,
        /// The accepted values, comma separated.
        expected: &'static str,
    },
}

/// A model file that cannot be used: unreadable, malformed, or not matching its config.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file (truncated, corrupt header, bad offsets).
    #[error("{path}: not a valid safetensors file: {reason}")]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The metadata is missing or wrong.
    #[error("{path}: {reason}")]
    Metadata {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The configuration in the metadata is invalid.
    #[error("{path}: {source}")]
    Config {
        /// The file.
        path: std::path::PathBuf,
        /// The invalid value.
        source: ConfigError,
    },
    /// A tensor the network needs is absent.
    #[error("{path}: missing tensor {name:?} (expected shape {shape:?})")]
    MissingTensor {
        /// The file.
        path: std::path::PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape it should have.
        shape: Vec<usize>,
    },
    /// A tensor the network does not have.
    #[error("{path}: unexpected tensor {name:?}: the {config} has no such weight")]
    UnexpectedTensor {
        /// The file.
        path: std::path::PathBuf,
        /// The tensor's name.
        name: String,
        /// The configuration it was checked against.
        config: String,
    },
    /// A tensor of the wrong shape.
    #[error("{path}: tensor {name:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The file.
        path: std::path::PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the network needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor of the wrong element type.
    #[error("{path}: tensor {name:?} has dtype {found}, expected F32, F16 or BF16")]
    Dtype {
        /// The file.
        path: std::path::PathBuf,
        /// The tensor's name.
        name: String,
        /// The dtype in the file.
        found: String,
    },
    /// A tensor holds NaN or infinite values.
    #[error("{path}: tensor {name:?} holds a non-finite value at index {index}")]
    NonFinite {
        /// The file.
        path: std::path::PathBuf,
        /// The tensor's name.
        name: String,
        /// First bad element.
        index: usize,
    },
    /// A labels file that does not match the model.
    #[error("{path}: {reason}")]
    Labels {
        /// The labels file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// An image that cannot be used.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The file is not an image this program can decode.
    #[error("{path}: cannot decode image: {reason}")]
    Decode {
        /// The file.
        path: std::path::PathBuf,
        /// The decoder's message.
        reason: String,
    },
}
