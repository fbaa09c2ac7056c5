//! Reading a TensorFlow.js weights manifest (`*-weights_manifest.json` + its `.bin` shards) and
//! converting face-api's SSD-MobileNet v1 face detector into a [`DetectorFile`].
//!
//! The manifest lists weight groups; each group's `paths` are concatenated and its weights
//! follow one another in that byte stream: `float32`/`int32` as 4 little-endian bytes, or
//! quantized (`quantization.dtype` `uint8`/`uint16`, value = `min + scale · q`, computed in
//! f64 and rounded to f32 as TensorFlow.js does).
//!
//! face-api's graph folds batch norm into the stem, the pointwise layers and the extra layers
//! (`convolution_bn_offset`); they are stored with that offset as a bias and an identity batch
//! norm (γ 1, β 0, μ 0, σ² = 1 − ε), which folds back to exactly the same f32 weights. The
//! depthwise layers keep their batch norm. The graph's anchors (`Output/extra_dim`) are
//! compared with the ones the configuration generates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::anchors;
use super::config::DetectorConfig;
use super::file::{name, DetectorFile, PREFIX};
use crate::error::ModelError;
use crate::weights::{names, BnTensor, ModelFile, Tensor};

/// Largest manifest accepted (face-api's is 28 KB).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Largest total of weight shards accepted.
const MAX_WEIGHT_BYTES: u64 = 2 << 30;
/// How far the graph's anchors may be from ours (they are f32 values of the same formula).
const ANCHOR_TOLERANCE: f32 = 1e-5;

/// Bytes of one value to f32.
type Decode = Box<dyn Fn(&[u8]) -> f32>;

#[derive(Debug, Deserialize)]
struct Group {
    paths: Vec<String>,
    weights: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    quantization: Option<Quantization>,
}

#[derive(Debug, Deserialize)]
struct Quantization {
    dtype: String,
    min: Option<f64>,
    scale: Option<f64>,
}

/// Every tensor of a TF.js model, dequantized to f32 (`int32` tensors as f32 values).
///
/// # Errors
///
/// The manifest is not valid JSON of the format, a shard is missing or shorter than the
/// manifest says, a dtype is not supported, a shape overflows.
pub fn read_manifest(path: &Path) -> Result<BTreeMap<String, Tensor>, ModelError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ModelError::Io { path: p, source }
    };
    let size = std::fs::metadata(path).map_err(io(path))?.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(ModelError::Format {
            path: path.to_path_buf(),
            reason: format!("{size} bytes is too large for a manifest"),
        });
    }
    let text = crate::files::read_regular(path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    parse_manifest(&text, path, &mut |shard| {
        let shard_path: PathBuf = dir.join(shard);
        crate::files::read_regular(&shard_path).map_err(io(&shard_path))
    })
}

/// [`read_manifest`] on a manifest's bytes, with `shard(name)` giving each weight file's bytes
/// (`path` names the manifest in messages).
///
/// # Errors
///
/// As [`read_manifest`].
pub fn parse_manifest(
    text: &[u8],
    path: &Path,
    shard: &mut dyn FnMut(&str) -> Result<Vec<u8>, ModelError>,
) -> Result<BTreeMap<String, Tensor>, ModelError> {
    let bad = |reason: String| ModelError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let groups: Vec<Group> = serde_json::from_slice(text)
        .map_err(|e| bad(format!("not a TensorFlow.js weights manifest: {e}")))?;
    let mut tensors = BTreeMap::new();
    for (g, group) in groups.iter().enumerate() {
        let mut bytes = Vec::new();
        for name in &group.paths {
            if name.contains("..") || Path::new(name).is_absolute() {
                return Err(bad(format!(
                    "group {g}: shard path {name:?} leaves the folder"
                )));
            }
            let data = shard(name)?;
            if (bytes.len() + data.len()) as u64 > MAX_WEIGHT_BYTES {
                return Err(bad(format!(
                    "group {g}: weights larger than {MAX_WEIGHT_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&data);
        }
        let mut offset = 0usize;
        for entry in &group.weights {
            let what = |reason: &str| bad(format!("weight {:?}: {reason}", entry.name));
            let count = entry
                .shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .filter(|&n| n <= (MAX_WEIGHT_BYTES as usize))
                .ok_or_else(|| what("shape too large"))?;
            let (width, decode): (usize, Decode) = match &entry.quantization {
                Some(q) => {
                    let (min, scale) = match (q.min, q.scale) {
                        (Some(m), Some(s)) if m.is_finite() && s.is_finite() => (m, s),
                        _ => return Err(what("quantization without a finite min and scale")),
                    };
                    match q.dtype.as_str() {
                        "uint8" => (1, Box::new(move |b| (b[0] as f64 * scale + min) as f32)),
                        "uint16" => (
                            2,
                            Box::new(move |b| {
                                (u16::from_le_bytes([b[0], b[1]]) as f64 * scale + min) as f32
                            }),
                        ),
                        other => {
                            return Err(what(&format!(
                                "quantization dtype {other} is not supported"
                            )))
                        }
                    }
                }
                None => match entry.dtype.as_str() {
                    "float32" => (
                        4,
                        Box::new(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    ),
                    "int32" => (
                        4,
                        Box::new(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
                    ),
                    other => return Err(what(&format!("dtype {other} is not supported"))),
                },
            };
            let len = count * width;
            let chunk = bytes
                .get(offset..offset + len)
                .ok_or_else(|| what(&format!("the shards end before its {len} bytes")))?;
            offset += len;
            let data: Vec<f32> = chunk.chunks_exact(width).map(&decode).collect();
            tensors.insert(entry.name.clone(), Tensor::new(entry.shape.clone(), data));
        }
        if offset != bytes.len() {
            return Err(bad(format!(
                "group {g}: the manifest accounts for {offset} of the shards' {} bytes",
                bytes.len()
            )));
        }
    }
    Ok(tensors)
}

/// Converts face-api's SSD-MobileNet v1 (a TF.js manifest) into a detector.
///
/// # Errors
///
/// As [`read_manifest`]; a tensor the detector needs is missing or mis-shaped; the graph's
/// anchors are not the configuration's.
pub fn import_face_api(path: &Path) -> Result<DetectorFile, ModelError> {
    let mut source = read_manifest(path)?;
    let config = DetectorConfig::face_api();
    let bad = |reason: String| ModelError::Metadata {
        path: path.to_path_buf(),
        reason,
    };
    let mut take = |from: &str, shape: Vec<usize>| -> Result<Tensor, ModelError> {
        let t = source.remove(from).ok_or_else(|| {
            bad(format!(
                "no tensor {from:?}: not face-api's SSD-MobileNet v1"
            ))
        })?;
        if t.data.len() != shape.iter().product::<usize>() {
            return Err(bad(format!(
                "tensor {from:?} has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        Ok(Tensor::new(shape, t.data))
    };
    let eps = config.bn_epsilon;
    let identity_bn = |out: &mut BTreeMap<String, Tensor>, layer: &str, c: usize| {
        for (t, v) in [
            (BnTensor::Gamma, 1.0),
            (BnTensor::Beta, 0.0),
            (BnTensor::MovingMean, 0.0),
            (BnTensor::MovingVariance, 1.0 - eps),
        ] {
            out.insert(names::bn(layer, t), Tensor::new(vec![c], vec![v; c]));
        }
    };
    let body = config.backbone().map_err(|source| ModelError::Config {
        path: path.to_path_buf(),
        source,
    })?;
    let mut backbone = BTreeMap::new();
    for layer in body.layers() {
        let (cin, cout) = (layer.input[2], layer.output[2]);
        let block = layer.block.unwrap_or(0);
        let tf = |kind: &str, leaf: &str| format!("MobilenetV1/Conv2d_{block}_{kind}/{leaf}");
        match layer.name.rsplit('/').next() {
            Some("depthwise") => {
                let w = take(&tf("depthwise", "depthwise_weights"), vec![3, 3, cin])?;
                backbone.insert(names::weight(&layer.name), w);
                for (t, leaf) in [
                    (BnTensor::Gamma, "gamma"),
                    (BnTensor::Beta, "beta"),
                    (BnTensor::MovingMean, "moving_mean"),
                    (BnTensor::MovingVariance, "moving_variance"),
                ] {
                    let v = take(&tf("depthwise", &format!("BatchNorm/{leaf}")), vec![cout])?;
                    backbone.insert(names::bn(&layer.name, t), v);
                }
            }
            _ => {
                // The stem is named Conv2d_0_pointwise in this graph.
                let shape = match layer.kernel {
                    1 => vec![cin, cout],
                    k => vec![k, k, cin, cout],
                };
                backbone.insert(
                    names::weight(&layer.name),
                    take(&tf("pointwise", "weights"), shape)?,
                );
                let bias = take(&tf("pointwise", "convolution_bn_offset"), vec![cout])?;
                backbone.insert(names::bias(&layer.name), bias);
                identity_bn(&mut backbone, &layer.name, cout);
            }
        }
    }
    let mut tensors = BTreeMap::new();
    for (i, layer) in config
        .extra_layers(body.feature_shape())
        .into_iter()
        .enumerate()
    {
        let (cin, cout) = (layer.input[2], layer.output[2]);
        let tf = |leaf: &str| format!("Prediction/Conv2d_{i}_pointwise/{leaf}");
        let shape = match layer.kernel {
            1 => vec![cin, cout],
            k => vec![k, k, cin, cout],
        };
        let full = format!("{PREFIX}{}", layer.name);
        tensors.insert(names::weight(&full), take(&tf("weights"), shape)?);
        tensors.insert(
            names::bias(&full),
            take(&tf("convolution_bn_offset"), vec![cout])?,
        );
        identity_bn(&mut tensors, &full, cout);
    }
    let shapes = config.map_shapes().map_err(|source| ModelError::Config {
        path: path.to_path_buf(),
        source,
    })?;
    for (m, shape) in shapes.iter().enumerate() {
        let (boxes, classes) = config.head_channels(m);
        for (ours, theirs, cout) in [
            ("box", "BoxEncodingPredictor", boxes),
            ("class", "ClassPredictor", classes),
        ] {
            let tf = |leaf: &str| format!("Prediction/BoxPredictor_{m}/{theirs}/{leaf}");
            let layer = format!("head_{m}/{ours}");
            tensors.insert(
                name(&layer, "weight"),
                take(&tf("weights"), vec![shape[2], cout])?,
            );
            tensors.insert(name(&layer, "bias"), take(&tf("biases"), vec![cout])?);
        }
    }
    // The graph's anchors must be the ones we generate.
    let stored = take(
        "Output/extra_dim",
        vec![shapes_anchor_count(&config, &shapes), 4],
    )?;
    let grids: Vec<(usize, usize)> = shapes.iter().map(|s| (s[0], s[1])).collect();
    let ours = anchors::generate(&config.anchors, &grids);
    let worst = stored
        .data
        .chunks_exact(4)
        .zip(&ours)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max);
    if worst > ANCHOR_TOLERANCE {
        return Err(bad(format!(
            "the graph's anchors differ from the configuration's by up to {worst}"
        )));
    }
    let backbone = ModelFile::new(
        body,
        eps,
        DetectorFile::backbone_preprocessing(),
        None,
        backbone,
        path,
    )?;
    DetectorFile::new(config, backbone, tensors, path)
}

/// Number of anchors of the maps.
fn shapes_anchor_count(config: &DetectorConfig, shapes: &[crate::layers::Hwc]) -> usize {
    shapes
        .iter()
        .enumerate()
        .map(|(m, s)| s[0] * s[1] * config.anchors.boxes_per_position(m))
        .sum()
}

/// Whether `path` looks like a TF.js weights manifest (a `.json` file).
pub fn is_manifest(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}
