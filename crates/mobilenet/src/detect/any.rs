//! Any detector file on its runtime: a float detector file on the f32 engine, an int8
//! `.tflite` on the integer engine, behind one session interface.

use std::path::Path;

use image::RgbImage;

use super::config::{DetectorConfig, NmsConfig};
use super::file::DetectorFile;
use super::model::{Detector, DetectorSession, RawDetections};
use super::quant::{QuantDetector, QuantDetectorSession, DETECTOR_METADATA};
use super::{Detection, Frame};
use crate::error::ModelError;

/// What every detector session does.
pub trait DetectSession {
    /// Boxes and scores for every anchor of a fitted input (`input² · 3` normalised values).
    fn run(&mut self, input: &[f32]) -> RawDetections;
    /// Detections in an image: fitted, run, decoded, suppressed (`nms`, or the detector's).
    fn detect(&mut self, img: &RgbImage, nms: Option<&NmsConfig>) -> (Vec<Detection>, Frame);
}

impl DetectSession for DetectorSession<'_> {
    fn run(&mut self, input: &[f32]) -> RawDetections {
        DetectorSession::run(self, input)
    }
    fn detect(&mut self, img: &RgbImage, nms: Option<&NmsConfig>) -> (Vec<Detection>, Frame) {
        DetectorSession::detect(self, img, nms)
    }
}

impl DetectSession for QuantDetectorSession<'_> {
    fn run(&mut self, input: &[f32]) -> RawDetections {
        QuantDetectorSession::run(self, input)
    }
    fn detect(&mut self, img: &RgbImage, nms: Option<&NmsConfig>) -> (Vec<Detection>, Frame) {
        QuantDetectorSession::detect(self, img, nms)
    }
}

/// A detector as `detect`, `eval-detect` and `bench` take it.
#[derive(Debug)]
pub enum AnyDetector {
    /// A detector file on the f32 engine.
    Float(Detector),
    /// An int8 `.tflite` on the integer engine.
    Int8(QuantDetector),
}

impl AnyDetector {
    /// Loads `path` by its contents: a `.tflite` file is an int8 detector, anything else a
    /// detector file.
    ///
    /// # Errors
    ///
    /// An unreadable or malformed file, or one that is not a detector.
    pub fn load(path: &Path) -> Result<AnyDetector, ModelError> {
        let bytes = crate::files::read_regular(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        AnyDetector::from_bytes(&bytes, path)
    }

    /// [`AnyDetector::load`] of a file already read (`path` names it in errors).
    ///
    /// # Errors
    ///
    /// As [`AnyDetector::load`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<AnyDetector, ModelError> {
        if crate::tflite::is_tflite(bytes) {
            let graph = crate::tflite::read(bytes, path).map_err(|e| ModelError::Metadata {
                path: e.path,
                reason: e.reason,
            })?;
            if graph.metadata_entry(DETECTOR_METADATA).is_none() {
                return Err(ModelError::Metadata {
                    path: path.to_path_buf(),
                    reason:
                        "a .tflite classifier, not a detector: run it with `mobilenet classify`"
                            .into(),
                });
            }
            return QuantDetector::from_graph(&graph, path).map(AnyDetector::Int8);
        }
        let file = DetectorFile::from_bytes(bytes, path)?;
        Detector::new(&file).map(AnyDetector::Float)
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        match self {
            AnyDetector::Float(d) => d.config(),
            AnyDetector::Int8(d) => d.config(),
        }
    }

    /// `"f32"`, `"bf16"` (a float detector's GEMMs) or `"int8"`.
    pub fn precision(&self) -> &'static str {
        match self {
            AnyDetector::Float(d) => d.plan().precision().name(),
            AnyDetector::Int8(_) => "int8",
        }
    }

    /// Runs a float detector's GEMMs at `precision` (`path` names the file in errors).
    ///
    /// # Errors
    ///
    /// bf16 on a CPU without AVX512-BF16, or for an int8 detector.
    pub fn set_precision(
        &mut self,
        precision: crate::Precision,
        path: &Path,
    ) -> Result<(), ModelError> {
        let bad = |reason: String| ModelError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        match self {
            AnyDetector::Float(d) => d.set_precision(precision).map_err(|e| bad(e.to_string())),
            AnyDetector::Int8(_) if precision == crate::Precision::F32 => Ok(()),
            AnyDetector::Int8(_) => Err(bad(format!(
                "an int8 detector; --precision {precision} is for float models"
            ))),
        }
    }

    /// A session for one image at a time on `threads` threads (0: all cores).
    pub fn session(&self, threads: usize) -> Box<dyn DetectSession + '_> {
        match self {
            AnyDetector::Float(d) => Box::new(d.session(threads)),
            AnyDetector::Int8(d) => Box::new(d.session(threads)),
        }
    }
}
