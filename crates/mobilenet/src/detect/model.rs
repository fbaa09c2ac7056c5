//! A detector planned for the f32 engine, and sessions that run it on images.

use image::RgbImage;
use mobilenet_kernels::Isa;

use super::boxes::{decode, nms, Detection};
use super::config::{DetectorConfig, NmsConfig, ScoreFunction};
use super::file::{name, DetectorFile, PREFIX};
use super::image::{fit, Frame};
use crate::classifier::ModelInfo;
use crate::error::ModelError;
use crate::infer::{scale_columns, ConvPlan, Fusion, HeadPlan, InferenceModel, Session};
use crate::weights::{names, BnTensor, BnWeights, ConvWeights};

/// A detector ready to run: the body and extra layers as one plan of the f32 engine, with the
/// box and class predictors as heads reading the feature maps.
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    plan: InferenceModel,
    anchors: Vec<[f32; 4]>,
}

impl Detector {
    /// Plans `file` for the best instruction set of this CPU.
    ///
    /// # Errors
    ///
    /// A weight of the wrong size (a file that skipped [`DetectorFile::new`]'s checks).
    pub fn new(file: &DetectorFile) -> Result<Detector, ModelError> {
        Detector::with_isa(file, Isa::detect())
    }

    /// Plans `file` for `isa` (tests compare instruction sets).
    ///
    /// # Errors
    ///
    /// As [`Detector::new`].
    pub fn with_isa(file: &DetectorFile, isa: Isa) -> Result<Detector, ModelError> {
        let mut plan = plan(file, isa, Fusion::Separable)?;
        plan.fuse_pipeline();
        let anchors = file.config.all_anchors().map_err(config_error)?;
        Ok(Detector {
            config: file.config.clone(),
            plan,
            anchors,
        })
    }

    /// Runs the backbone's and predictors' GEMMs at `precision` (see
    /// [`InferenceModel::set_precision`]).
    ///
    /// # Errors
    ///
    /// As [`InferenceModel::set_precision`]; the detector is unchanged then.
    pub fn set_precision(
        &mut self,
        precision: crate::Precision,
    ) -> Result<(), crate::infer::PrecisionUnsupported> {
        self.plan.set_precision(precision)
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }
    /// The anchors, `[ymin, xmin, ymax, xmax]` relative to the input.
    pub fn anchors(&self) -> &[[f32; 4]] {
        &self.anchors
    }
    /// The plan of the f32 engine (for reports).
    pub fn plan(&self) -> &InferenceModel {
        &self.plan
    }

    /// A session for one image at a time on `threads` threads (0: all cores).
    pub fn session(&self, threads: usize) -> DetectorSession<'_> {
        DetectorSession {
            detector: self,
            session: self.plan.session(1, threads),
            input: vec![0.0; self.plan.input_len()],
        }
    }
}

fn config_error(source: crate::error::ConfigError) -> ModelError {
    ModelError::Config {
        path: "<detector>".into(),
        source,
    }
}

/// The body and extra layers with batch norm folded, and each map's box and class predictors
/// as one head (box channels first).
pub(crate) fn parts(file: &DetectorFile) -> Result<(Vec<ConvPlan>, Vec<HeadPlan>), ModelError> {
    let config = &file.config;
    let backbone = &file.backbone;
    let body = backbone.config.layers();
    let extras = config.extra_layers(backbone.config.feature_shape());
    let mut convs = Vec::with_capacity(body.len() + extras.len());
    for layer in body {
        let w = backbone.conv(&layer)?;
        convs.push(folded(layer, w, backbone.bn_epsilon, config));
    }
    for layer in extras {
        let full = format!("{PREFIX}{}", layer.name);
        let get = |name: &str| -> Result<&[f32], ModelError> {
            file.tensors
                .get(name)
                .map(|t| t.data.as_slice())
                .ok_or_else(|| ModelError::Metadata {
                    path: "<detector>".into(),
                    reason: format!("tensor {name:?} is missing"),
                })
        };
        let bn = |t| get(&names::bn(&full, t));
        let bias_name = names::bias(&full);
        let w = ConvWeights {
            weight: get(&names::weight(&full))?,
            bias: file.tensors.get(&bias_name).map(|t| t.data.as_slice()),
            bn: BnWeights {
                gamma: bn(BnTensor::Gamma)?,
                beta: bn(BnTensor::Beta)?,
                mean: bn(BnTensor::MovingMean)?,
                variance: bn(BnTensor::MovingVariance)?,
            },
        };
        convs.push(folded(layer, w, config.bn_epsilon, config));
    }
    let mut heads = Vec::new();
    for (m, after) in config.map_layers().into_iter().enumerate() {
        // Box and class predictors read the same map: one GEMM, box channels first.
        let part = |p: &str, leaf: &str| {
            file.tensors
                .get(&name(&format!("head_{m}/{p}"), leaf))
                .ok_or_else(|| ModelError::Metadata {
                    path: "<detector>".into(),
                    reason: format!("head {m} has no {p} {leaf}"),
                })
        };
        let (bw, cw) = (part("box", "weight")?, part("class", "weight")?);
        let (nb, nc) = (bw.shape[1], cw.shape[1]);
        let weights = bw
            .data
            .chunks_exact(nb)
            .zip(cw.data.chunks_exact(nc))
            .flat_map(|(b, c)| b.iter().chain(c).copied())
            .collect();
        let bias = [part("box", "bias")?, part("class", "bias")?]
            .iter()
            .flat_map(|t| t.data.iter().copied())
            .collect();
        heads.push(HeadPlan {
            after,
            weights,
            bias,
        });
    }
    Ok((convs, heads))
}

/// The detector as one plan of the f32 engine, separable pairs fused as `fusion` says (no row
/// pipeline: calibration observes every layer).
pub(crate) fn plan(
    file: &DetectorFile,
    isa: Isa,
    fusion: Fusion,
) -> Result<InferenceModel, ModelError> {
    let (convs, heads) = parts(file)?;
    let info = ModelInfo {
        config: file.config.backbone().map_err(config_error)?,
        preprocessing: file.backbone.preprocessing,
        labels: None,
    };
    InferenceModel::from_plans(info, isa, fusion, convs, heads)
}

/// Folds a convolution's batch norm and pairs it with its layer.
fn folded(
    layer: crate::layers::Layer,
    w: ConvWeights<'_>,
    eps: f32,
    config: &DetectorConfig,
) -> ConvPlan {
    let (scale, bias) = w.folded_bn(eps);
    ConvPlan {
        weights: scale_columns(w.weight, &scale),
        bias,
        activation: Some(config.activation),
        layer,
    }
}

/// Per-anchor output of the network: decoded boxes and the labelled classes' scores.
#[derive(Clone, Debug, PartialEq)]
pub struct RawDetections {
    /// One box per anchor, `[ymin, xmin, ymax, xmax]` relative to the input.
    pub boxes: Vec<[f32; 4]>,
    /// `[anchors × labels]`: the score of classes `1..=labels` per anchor.
    pub scores: Vec<f32>,
}

/// Runs a [`Detector`], reusing its buffers.
#[derive(Debug)]
pub struct DetectorSession<'d> {
    detector: &'d Detector,
    session: Session<'d>,
    input: Vec<f32>,
}

impl DetectorSession<'_> {
    /// Starts recording per-step times (see [`Session::enable_profiling`]).
    pub fn enable_profiling(&mut self) {
        self.session.enable_profiling();
    }
    /// The underlying engine session (profile, plan).
    pub fn engine(&self) -> &Session<'_> {
        &self.session
    }

    /// Boxes and scores for every anchor of a preprocessed input (`input² · 3` values).
    ///
    /// # Panics
    ///
    /// If `input` has the wrong length.
    pub fn run(&mut self, input: &[f32]) -> RawDetections {
        self.session.run(input);
        decode_heads(
            &self.detector.config,
            &self.detector.anchors,
            &self.session.heads(),
        )
    }

    /// Detections in an image: fitted to the input, run, decoded, suppressed (`nms`, or the
    /// configuration's), with boxes mapped back by the returned [`Frame`].
    pub fn detect(
        &mut self,
        img: &RgbImage,
        nms_config: Option<&NmsConfig>,
    ) -> (Vec<Detection>, Frame) {
        let config = &self.detector.config;
        let mut input = std::mem::take(&mut self.input);
        let frame = fit(img, config, &mut input);
        let raw = self.run(&input);
        self.input = input;
        let nms_config = nms_config.unwrap_or(&self.detector.config.nms);
        let found = nms(
            &raw.boxes,
            &raw.scores,
            self.detector.config.labels.len(),
            nms_config,
        );
        (found, frame)
    }
}

/// Boxes and scores of every anchor from the maps' predictor outputs (per map, each pixel's
/// box codes then class logits).
pub(crate) fn decode_heads(
    config: &DetectorConfig,
    anchors: &[[f32; 4]],
    heads: &[&[f32]],
) -> RawDetections {
    let (logits, labelled) = (config.classes, config.labels.len());
    let mut boxes = Vec::with_capacity(anchors.len());
    let mut scores = Vec::with_capacity(anchors.len() * labelled);
    let mut anchors = anchors.iter();
    for (m, out) in heads.iter().enumerate() {
        let (nb, nc) = config.head_channels(m);
        for pixel in out.chunks_exact(nb + nc) {
            let (codes, classes) = pixel.split_at(nb);
            for (code, logit) in codes.chunks_exact(4).zip(classes.chunks_exact(logits)) {
                let Some(&anchor) = anchors.next() else {
                    unreachable!("one anchor per predicted box by construction");
                };
                let code = [code[0], code[1], code[2], code[3]];
                boxes.push(decode(anchor, code, config.box_scales));
                push_scores(config.score, logit, labelled, &mut scores);
            }
        }
    }
    RawDetections { boxes, scores }
}

/// Appends the scores of classes `1..=labelled` from one anchor's logits.
fn push_scores(score: ScoreFunction, logits: &[f32], labelled: usize, out: &mut Vec<f32>) {
    match score {
        ScoreFunction::Sigmoid => {
            out.extend(
                logits[1..=labelled]
                    .iter()
                    .map(|&x| (1.0 / (1.0 + (-(x as f64)).exp())) as f32),
            );
        }
        ScoreFunction::Softmax => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
            out.extend(
                logits[1..=labelled]
                    .iter()
                    .map(|&x| ((x as f64 - max).exp() / sum) as f32),
            );
        }
    }
}
