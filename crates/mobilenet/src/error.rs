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
    #[error("number of classes {0} is invalid: a classifier needs at least 1 class")]
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
