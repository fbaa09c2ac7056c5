//! ONNX files, in both directions.
//!
//! Export (`export.rs`, `mobilenet export --format onnx`): a float model as an opset-13 graph —
//! batch norm folded into the convolutions, ReLU6 as `Clip(0, 6)` (ReLU as `Relu`), explicit
//! pads (TF-SAME's bottom/right padding or symmetric), depthwise convolutions as grouped
//! `Conv`, `GlobalAveragePool`, `Flatten` and the classifier as `Gemm` giving `[1, classes]`
//! logits. The input is the normalised image, NCHW `[1, 3, R, R]` by default or NHWC (a
//! `Transpose` first); node and tensor names come from the layer table; labels and the
//! preprocessing go in `metadata_props`.
//!
//! Int8 export (`qdq.rs`, [`export_qdq`]): a quantized `.tflite` as a QDQ graph
//! (`QuantizeLinear`/`DequantizeLinear` around float operators, integer initializers), which
//! ONNX Runtime runs with integer kernels.
//!
//! Import (`import.rs`, through [`crate::import`] for `.onnx` files): a MobileNet v1 graph of
//! that shape — ours, or the peers' (`make_models.py`: BN folded, a `Softmax` at the end) —
//! matched node by node against the layer table; anything else is refused naming the node or
//! tensor.
//!
//! The protobuf is written and read by hand (`proto.rs`): the handful of ONNX messages needed
//! (field numbers from `onnx/onnx.proto`) are varints, length-delimited fields and fixed
//! 32-bit values.

mod export;
mod import;
mod proto;
mod qdq;

pub use export::{export_onnx, Layout};
pub use import::read_onnx;
pub use qdq::export_qdq;
