//! MobileNet v1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for
//! Mobile Vision Applications") in Rust.
//!
//! This crate holds the model's configuration (width multiplier α, input resolution, classes,
//! conventions), the paper's Table 1 as a layer table, exact cost accounting, the model file
//! format, weight import and the inference engine.
//!
//! ```
//! use mobilenet::{MobileNetConfig, ModelCost, Preset};
//!
//! let config = MobileNetConfig::from_preset("0.5_160".parse::<Preset>()?)?;
//! let cost = ModelCost::of(&config);
//! println!("{config}: {:.1} M Mult-Adds, {:.2} M parameters",
//!          cost.total.mult_adds as f64 / 1e6, cost.total.params() as f64 / 1e6);
//! for (layer, c) in &cost.layers {
//!     println!("{:<20} {:?} → {:?} {:>12}", layer.name, layer.input, layer.output, c.mult_adds);
//! }
//! assert_eq!(cost.total.mult_adds, 76_524_800); // the paper's Table 9: "76"
//! # Ok::<(), mobilenet::ConfigError>(())
//! ```

pub mod checkpoints;
pub mod classifier;
pub mod classify;
mod config;
mod cost;
pub mod data;
pub mod detect;
mod error;
pub mod eval;
pub mod exec;
mod files;
pub mod import;
pub mod infer;
pub mod int8;
mod layers;
pub mod memory;
pub mod onnx;
pub mod paper;
pub mod preprocess;
mod preset;
pub mod tflite;
pub mod train;
pub mod weights;

pub use classifier::{AnyModel, Classifier, Runner, StepInfo};
pub use config::{
    format_alpha, Activation, ClassifierHead, MobileNetConfig, Padding, Preset, Stem, Variant,
    DEFAULT_DROPOUT, DEFAULT_MIN_DEPTH, IMAGENET_CLASSES, MAX_ALPHA, MAX_CLASSES, MAX_RESOLUTION,
    MIN_RESOLUTION, PRESET_ALPHAS, PRESET_RESOLUTIONS,
};
pub use cost::{LayerCost, ModelCost};
pub use error::{ConfigError, ImageError, ModelError};
pub use infer::{Fusion, InferenceModel, Precision, Session};
pub use layers::{
    conv_output_size, BlockKind, BlockSpec, Hwc, Layer, LayerKind, KERNEL, MOBILENET_V1_BODY,
    SHALLOW_REMOVED_BLOCKS,
};
pub use mobilenet_kernels::hugepages::HugePages;
pub use mobilenet_kernels::rng::Rng;
pub use weights::{ModelFile, WeightInit};

// The README's Rust example is compiled and run as a doctest so that it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
