//! The int8 runtime: quantized MobileNets (Google's uint8 `.tflite` files, int8 files such as
//! the Visual Wake Words detector, and what post-training quantization writes), bit-exact with
//! TFLite's reference kernels.
//!
//! | file | what |
//! |---|---|
//! | `ir.rs` | [`QuantModel`]: the integer IR read from a `.tflite` graph, and the reference interpreter |
//! | `chain.rs` | a chain of convolutions with 1×1 heads (a quantized detector) read against its layers |
//! | `engine.rs` | [`QuantEngine`]: the IR planned onto the int8 kernels, same bytes, fast |
//! | `calibrate.rs` | calibration ([`Calibrator`]): activation ranges on sample images |
//! | `ptq.rs` | post-training quantization ([`quantize`]) into a TFLite graph |
//! | `model.rs` | [`QuantizedModel`]: the engine with its preprocessing and labels |
//!
//! The `.tflite` format itself (reading, writing, matching against the layer table) is in
//! [`crate::tflite`].

mod calibrate;
mod chain;
mod engine;
mod ir;
mod model;
mod multiplier;
mod ptq;
mod reference;
mod runner;
mod session;

pub use calibrate::{Calibration, Calibrator};
pub use chain::HeadSpec;
pub use engine::{QuantEngine, Requantization, Unsupported};
pub use ir::{QuantModel, QuantizedMultiplier};
pub use model::QuantizedModel;
pub(crate) use ptq::{fused, input_params, range_of, Builder};
pub use ptq::{quantize, QuantizeError, LABELS_METADATA, PREPROCESSING_METADATA};
pub use session::QuantSession;
