//! Quantized `.tflite` MobileNets as classifiers: Google's uint8 files and what
//! [`super::ptq`] writes, run by the integer engine on raw 8-bit pixels.

use std::path::Path;

use super::engine::{QuantEngine, Requantization, Unsupported};
use super::ir::QuantModel;
use super::ptq::PREPROCESSING_METADATA;
use super::session::QuantSession;
use crate::classifier::ModelInfo;
use crate::error::ModelError;
use crate::preprocess::{PixelNorm, Preprocessing};
use crate::tflite::{self, ElementType, MobileNetGraph};

/// A quantized MobileNet ready for the integer engine, with what it needs to take images.
#[derive(Debug)]
pub struct QuantizedModel {
    graph: MobileNetGraph,
    model: QuantModel,
    engine: QuantEngine,
    pub(super) info: ModelInfo,
}

impl QuantizedModel {
    /// Loads a quantized `.tflite` file.
    ///
    /// # Errors
    ///
    /// An unreadable or malformed file, a graph that is not a quantized MobileNet v1.
    pub fn load(path: &Path) -> Result<QuantizedModel, ModelError> {
        let bytes = crate::files::read_regular(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        QuantizedModel::from_bytes(&bytes, path)
    }

    /// Loads a quantized `.tflite` file held in memory (`path` is used in messages).
    ///
    /// # Errors
    ///
    /// As [`QuantizedModel::load`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<QuantizedModel, ModelError> {
        let bad = |e: tflite::TfliteError| ModelError::Metadata {
            path: e.path,
            reason: e.reason,
        };
        QuantizedModel::from_graph(&tflite::read(bytes, path).map_err(bad)?, path)
    }

    /// A quantized model from a graph already read (`path` is used in messages).
    ///
    /// # Errors
    ///
    /// As [`QuantizedModel::load`].
    pub fn from_graph(g: &tflite::Graph, path: &Path) -> Result<QuantizedModel, ModelError> {
        let bad = |e: tflite::TfliteError| ModelError::Metadata {
            path: e.path,
            reason: e.reason,
        };
        let graph = MobileNetGraph::from_graph(g, path).map_err(bad)?;
        let model = QuantModel::new(g, &graph, path).map_err(bad)?;
        let engine = QuantEngine::new(&model).map_err(|e| ModelError::Metadata {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let meta = |name: &str| g.metadata_entry(name);
        let labels = g.labels().map_err(|reason| ModelError::Metadata {
            path: path.to_path_buf(),
            reason,
        })?;
        // The input quantization is the normalisation: real = s·(q − z), q the pixel (uint8)
        // or pixel − 128 (int8). Only the crop comes from our metadata (else none).
        let offset = if model.kind == ElementType::I8 {
            128.0
        } else {
            0.0
        };
        let (s, z) = (model.input.0, model.input.1 as f32 + offset);
        let mut preprocessing = Preprocessing {
            crop: 1.0,
            norm: PixelNorm::MeanStd {
                mean: [z / 255.0; 3],
                std: [1.0 / (255.0 * s); 3],
            },
        };
        if let Some(d) = meta(PREPROCESSING_METADATA) {
            let p: Preprocessing = serde_json::from_slice(d).map_err(|e| ModelError::Metadata {
                path: path.to_path_buf(),
                reason: format!("the preprocessing metadata does not parse: {e}"),
            })?;
            preprocessing.crop = p.crop;
        }
        let graph_config = graph.config;
        let model = QuantizedModel {
            graph,
            model,
            engine,
            info: ModelInfo {
                config: graph_config,
                preprocessing,
                labels,
            },
        };
        if let (Some(l), Some(c)) = (&model.info.labels, model.info.config.classes()) {
            if l.len() != c {
                return Err(ModelError::Metadata {
                    path: path.to_path_buf(),
                    reason: format!("{} labels for {c} classes", l.len()),
                });
            }
        }
        Ok(model)
    }

    /// Activation type: uint8 or int8.
    pub fn kind(&self) -> ElementType {
        self.model.kind
    }

    /// Replans the engine with another requantization (on the same instruction set).
    ///
    /// # Errors
    ///
    /// When a layer's scale is outside what that form takes.
    pub fn set_requantization(&mut self, r: Requantization) -> Result<(), Unsupported> {
        if r != self.engine.requantization() {
            self.engine = QuantEngine::planned(&self.model, self.engine.isa(), r)?;
        }
        Ok(())
    }

    /// The integer engine.
    pub fn engine(&self) -> &QuantEngine {
        &self.engine
    }

    /// The graph as the layer table matched it: each layer's tensors.
    pub fn graph(&self) -> &MobileNetGraph {
        &self.graph
    }

    /// The bit-exact reference interpreter.
    pub fn reference(&self) -> &QuantModel {
        &self.model
    }

    /// Class probabilities from the engine's output: dequantized softmax outputs, or the
    /// softmax of dequantized logits.
    pub fn probabilities(&self, out: &[i32]) -> Vec<f32> {
        let (s, z) = self.model.output;
        let v: Vec<f32> = out.iter().map(|&q| s * (q - z) as f32).collect();
        if self.graph.softmax {
            v
        } else {
            let mut p = vec![0.0; v.len()];
            mobilenet_kernels::pool::softmax(&v, &mut p);
            p
        }
    }

    /// A session on `threads` threads (0: all cores).
    pub fn session(&self, threads: usize) -> QuantSession<'_> {
        self.engine.session(threads)
    }
}
