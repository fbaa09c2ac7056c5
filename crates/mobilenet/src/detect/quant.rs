//! Detectors in int8: post-training quantization of a detector file into a `.tflite` graph
//! (per-channel int8 weights for the body, the extra layers and every predictor; int8
//! activations per tensor), and such a graph run by the integer engine.
//!
//! The graph is a chain of convolutions with one 1×1 convolution per predictor reading its
//! map; its outputs are each map's box codes then class logits (`2 × maps` int8 tensors,
//! quantized separately: box codes and logits span different ranges). Decoding and
//! suppression stay in float, as TFLite's `TFLite_Detection_PostProcess` does them. The
//! [`DetectorConfig`] travels in the file's metadata.

use std::collections::HashMap;
use std::path::Path;

use image::RgbImage;
use mobilenet_kernels::Isa;

use super::config::{DetectorConfig, NmsConfig};
use super::file::DetectorFile;
use super::model::{decode_heads, parts, plan, RawDetections};
use super::{Detection, Frame};
use crate::error::ModelError;
use crate::infer::Fusion;
use crate::int8::{
    fused, input_params, range_of, Builder, Calibration, Calibrator, HeadSpec, QuantEngine,
    QuantModel, QuantSession, QuantizeError,
};
use crate::layers::{Layer, LayerKind};
use crate::tflite::{self, FusedActivation, Graph};

/// Metadata entry of a quantized detector holding its [`DetectorConfig`] as JSON.
pub const DETECTOR_METADATA: &str = "mobilenet_detector";

/// Calibration name of map `m`'s box (`part = "box"`) or class predictor.
fn head_name(m: usize, part: &str) -> String {
    format!("head_{m}/{part}")
}

/// A calibrator for `file`: observes every layer of the body and extra layers, and the box
/// codes and class logits of each map. It takes inputs fitted by [`super::fit`].
///
/// # Errors
///
/// A weight of the wrong size.
pub fn calibrator(file: &DetectorFile) -> Result<Calibrator, ModelError> {
    let config = &file.config;
    let groups = (0..config.maps_count())
        .map(|m| {
            let (nb, nc) = config.head_channels(m);
            vec![
                (head_name(m, "box"), 0..nb),
                (head_name(m, "class"), nb..nb + nc),
            ]
        })
        .collect();
    let plan = plan(file, Isa::detect(), Fusion::None)?;
    Ok(Calibrator::with_heads(plan, groups))
}

/// Quantizes `file` with the ranges of `calibration` (from [`calibrator`]) into an int8 graph
/// with the detector's configuration in its metadata.
///
/// # Errors
///
/// A layer or predictor the calibration did not observe, or a weight of the wrong size.
pub fn quantize_detector(
    file: &DetectorFile,
    calibration: &Calibration,
) -> Result<Graph, QuantizeError> {
    let config = &file.config;
    let (convs, heads) = parts(file).map_err(|e| QuantizeError(e.to_string()))?;
    let (mut g, mut cur) = Builder::new(config.input, input_params(config.scale, config.offset));
    let mut maps = HashMap::new();
    for c in &convs {
        let range = range_of(calibration, &c.layer.name)?;
        let act = c.activation.map_or(FusedActivation::None, fused);
        cur = g.conv(
            &c.layer,
            (&c.weights, &c.bias),
            cur,
            range,
            act,
            config.padding,
        );
        maps.insert(c.layer.name.as_str(), (cur, c.layer.output));
    }
    for (m, head) in heads.iter().enumerate() {
        let &(src, map) = maps
            .get(head.after.as_str())
            .ok_or_else(|| QuantizeError(format!("no layer {} for head {m}", head.after)))?;
        let (nb, nc) = config.head_channels(m);
        for (part, cols) in [("box", 0..nb), ("class", nb..nb + nc)] {
            let weights: Vec<f32> = head
                .weights
                .chunks_exact(nb + nc)
                .flat_map(|row| row[cols.clone()].iter().copied())
                .collect();
            let layer = Layer {
                name: head_name(m, part),
                block: None,
                kind: LayerKind::Pointwise,
                kernel: 1,
                stride: 1,
                input: map,
                output: [map[0], map[1], cols.len()],
            };
            let range = range_of(calibration, &layer.name)?;
            let bias = &head.bias[cols];
            let out = g.conv(
                &layer,
                (&weights, bias),
                src,
                range,
                FusedActivation::None,
                config.padding,
            );
            g.graph.outputs.push(out.tensor);
        }
    }
    let json = serde_json::to_vec(config).map_err(|e| QuantizeError(e.to_string()))?;
    g.graph.metadata.push((DETECTOR_METADATA.into(), json));
    Ok(g.graph)
}

/// Whether `bytes` are a `.tflite` file with a detector's metadata.
pub fn is_quantized_detector(bytes: &[u8]) -> bool {
    tflite::is_tflite(bytes)
        && tflite::read(bytes, Path::new(""))
            .is_ok_and(|g| g.metadata_entry(DETECTOR_METADATA).is_some())
}

/// An int8 detector ready for the integer engine.
#[derive(Debug)]
pub struct QuantDetector {
    config: DetectorConfig,
    anchors: Vec<[f32; 4]>,
    model: QuantModel,
    engine: QuantEngine,
    /// Each output's `(scale, zero point)`: box codes then class logits, map by map.
    outputs: Vec<(f32, i32)>,
}

impl QuantDetector {
    /// Loads a quantized detector (`.tflite` from [`quantize_detector`]).
    ///
    /// # Errors
    ///
    /// An unreadable or malformed file, one without a detector's metadata, or a graph that
    /// does not match its configuration.
    pub fn load(path: &Path) -> Result<QuantDetector, ModelError> {
        let bytes = crate::files::read_regular(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        QuantDetector::from_bytes(&bytes, path)
    }

    /// As [`QuantDetector::load`] from bytes in memory (`path` is used in messages).
    ///
    /// # Errors
    ///
    /// As [`QuantDetector::load`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<QuantDetector, ModelError> {
        let bad = |reason: String| ModelError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        let graph = tflite::read(bytes, path).map_err(|e| bad(e.reason))?;
        QuantDetector::from_graph(&graph, path)
    }

    /// As [`QuantDetector::load`] from a graph already read (`path` is used in messages).
    ///
    /// # Errors
    ///
    /// As [`QuantDetector::load`].
    pub fn from_graph(graph: &Graph, path: &Path) -> Result<QuantDetector, ModelError> {
        let bad = |reason: String| ModelError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        let json = graph.metadata_entry(DETECTOR_METADATA).ok_or_else(|| {
            bad("a .tflite file without detector metadata (not a detector from `mobilenet quantize`)".into())
        })?;
        let config: DetectorConfig = serde_json::from_slice(json)
            .map_err(|e| bad(format!("the detector metadata does not parse: {e}")))?;
        config
            .validate()
            .map_err(|e| bad(format!("the detector metadata: {e}")))?;
        let layers = config.layers().map_err(|e| bad(e.to_string()))?;
        let heads: Vec<HeadSpec> = config
            .map_layers()
            .into_iter()
            .enumerate()
            .flat_map(|(m, reads)| {
                let (nb, nc) = config.head_channels(m);
                [nb, nc].map(|channels| HeadSpec {
                    reads: reads.clone(),
                    channels,
                })
            })
            .collect();
        let model = QuantModel::chain(graph, &layers, &heads, path).map_err(|e| bad(e.reason))?;
        let engine = QuantEngine::new(&model).map_err(|e| bad(e.to_string()))?;
        let anchors = config.all_anchors().map_err(|e| bad(e.to_string()))?;
        let model_outputs = model.head_outputs();
        Ok(QuantDetector {
            config,
            anchors,
            model,
            engine,
            outputs: model_outputs,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The integer engine.
    pub fn engine(&self) -> &QuantEngine {
        &self.engine
    }

    /// The bit-exact reference interpreter of the same graph.
    pub fn reference(&self) -> &QuantModel {
        &self.model
    }

    /// A session for one image at a time on `threads` threads (0: all cores).
    pub fn session(&self, threads: usize) -> QuantDetectorSession<'_> {
        QuantDetectorSession {
            detector: self,
            session: self.engine.session(threads),
            input: vec![0.0; self.model.input_len],
            bytes: vec![0; self.model.input_len],
            maps: Vec::new(),
        }
    }

    /// The engine's input bytes for a fitted input (`input² · 3` normalised values).
    pub fn quantize_input(&self, input: &[f32], bytes: &mut [u8]) {
        let (s, z) = self.model.input;
        for (b, &x) in bytes.iter_mut().zip(input) {
            *b = self.engine.to_byte((x / s).round() as i32 + z);
        }
    }

    /// Each map's predictions dequantized as the float detector lays them out (per pixel, box
    /// codes then class logits), from the heads' quantized outputs.
    pub fn dequantize_heads(&self, heads: &[Vec<i32>], maps: &mut Vec<Vec<f32>>) {
        let params = &self.outputs;
        maps.resize(self.config.maps_count(), Vec::new());
        for (m, map) in maps.iter_mut().enumerate() {
            let (nb, nc) = self.config.head_channels(m);
            let ((sb, zb), (sc, zc)) = (params[2 * m], params[2 * m + 1]);
            map.clear();
            for (b, c) in heads[2 * m]
                .chunks_exact(nb)
                .zip(heads[2 * m + 1].chunks_exact(nc))
            {
                map.extend(b.iter().map(|&q| sb * (q - zb) as f32));
                map.extend(c.iter().map(|&q| sc * (q - zc) as f32));
            }
        }
    }
}

/// Runs a [`QuantDetector`], reusing its buffers.
#[derive(Debug)]
pub struct QuantDetectorSession<'d> {
    detector: &'d QuantDetector,
    session: QuantSession<'d>,
    input: Vec<f32>,
    bytes: Vec<u8>,
    maps: Vec<Vec<f32>>,
}

impl<'d> QuantDetectorSession<'d> {
    /// The integer engine's session (threads, profile).
    pub fn engine(&mut self) -> &mut QuantSession<'d> {
        &mut self.session
    }

    /// Boxes and scores for every anchor of a fitted input (`input² · 3` normalised values,
    /// quantized as the model's input says).
    ///
    /// # Panics
    ///
    /// If `input` has the wrong length.
    pub fn run(&mut self, input: &[f32]) -> RawDetections {
        let d = self.detector;
        assert_eq!(input.len(), self.bytes.len(), "wrong input length");
        d.quantize_input(input, &mut self.bytes);
        self.session.run(&self.bytes);
        d.dequantize_heads(self.session.heads(), &mut self.maps);
        let maps: Vec<&[f32]> = self.maps.iter().map(Vec::as_slice).collect();
        decode_heads(&d.config, &d.anchors, &maps)
    }

    /// Detections in an image, as [`super::DetectorSession::detect`].
    pub fn detect(
        &mut self,
        img: &RgbImage,
        nms_config: Option<&NmsConfig>,
    ) -> (Vec<Detection>, Frame) {
        let mut input = std::mem::take(&mut self.input);
        let frame = super::fit(img, &self.detector.config, &mut input);
        let raw = self.run(&input);
        self.input = input;
        let config = &self.detector.config;
        let nms = nms_config.unwrap_or(&config.nms);
        let found = super::nms(&raw.boxes, &raw.scores, config.labels.len(), nms);
        (found, frame)
    }
}
