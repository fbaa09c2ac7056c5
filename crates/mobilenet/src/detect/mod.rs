//! Object detection: SSD with a MobileNet v1 backbone (the paper's Table 13; the TensorFlow
//! Object Detection API's `ssd_mobilenet_v1`).
//!
//! | file | what |
//! |---|---|
//! | `config.rs` | the detector as data: input, feature maps, extra layers, anchors, classes, decoding, NMS; SSD300 and face-api's face detector |
//! | `any.rs` | any detector file on its runtime ([`AnyDetector`]), one session interface ([`DetectSession`]) |
//! | `anchors.rs` | the multiple-grid anchor generator |
//! | `boxes.rs` | the box coder, IoU, per-class non-maximum suppression |
//! | `coco.rs`, `cocoeval.rs` | COCO instances files (checked); box mAP exactly as pycocotools computes it |
//! | `evaluate.rs` | a detector over an annotated folder, in COCO's results format |
//! | `image.rs` | fitting an image to the square input, boxes back to pixels |
//! | `file.rs` | the detector file (a backbone model file plus `ssd/` tensors) |
//! | `model.rs` | the detector planned on the f32 engine (predictors as heads of the plan) |
//! | `quant.rs` | int8 detectors: calibration, quantization into a `.tflite` graph, the integer engine running it |
//! | `voc.rs` | Pascal VOC XML folders, read as a COCO data set |
//! | `tfjs.rs` | TensorFlow.js manifests; face-api's detector into a detector file |

mod anchors;
mod any;
mod boxes;
mod coco;
mod cocoeval;
mod config;
mod evaluate;
mod file;
mod image;
mod model;
mod quant;
pub mod tfjs;
mod voc;

pub use anchors::generate as generate_anchors;
pub use any::{AnyDetector, DetectSession};
pub use boxes::{decode, encode, iou, nms, Detection};
pub use coco::{AnnotationError, CocoAnnotation, CocoCategory, CocoDataset, CocoImage};
pub use cocoeval::{evaluate as coco_evaluate, CocoResult, CocoStats, EvalError};
pub use config::{
    AnchorConfig, CostRow, DetectorConfig, Fit, InterpolatedPosition, NmsConfig, ScoreFunction,
    COCO_LOGITS,
};
pub use evaluate::{category_map, detect_dataset, Agreement};
pub use file::{
    is_detector, is_detector_file, name as tensor_name, tensor_specs, DetectorFile, PREFIX,
};
pub use image::{fit, Frame};
pub use model::{Detector, DetectorSession, RawDetections};
pub use quant::{
    calibrator, is_quantized_detector, quantize_detector, QuantDetector, QuantDetectorSession,
    DETECTOR_METADATA,
};
pub use voc::{load_annotations, load_voc};
