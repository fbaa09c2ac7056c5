//! f32 inference: a model with batch norm folded and weights packed, and sessions that run it.
//!
//! [`InferenceModel::new`] folds every batch norm into its convolution's weights and a bias
//! (`scale = γ / √(σ² + ε)`, `w' = w · scale`, `b' = β − μ · scale`), packs the 1×1 and FC
//! weights for the GEMM microkernel of the detected instruction set, and keeps the layer list
//! as a flat plan (`fuse` then joins layers that run better together). A [`Session`] owns the
//! activation buffers for one batch size (two ping-pong buffers sized for the largest layer,
//! allocated once) and a thread pool of the execution layer.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the plan: one [`PlannedLayer`] per step, built from the layer table |
//! | `op.rs` | one struct per kind of op and how a step runs on a batch |
//! | `fuse.rs` | fusion passes: depthwise + pointwise pairs, the row pipeline |
//! | `pipeline.rs` | the row pipeline's execution |
//! | `session.rs` | buffers, image-major prefix, profiling |
//! | `precision.rs` | bf16 GEMMs |

use mobilenet_kernels::aligned::AlignedVec;
use mobilenet_kernels::conv::ConvShape;
use mobilenet_kernels::gemm::PackedB;
use mobilenet_kernels::Isa;

use crate::classifier::ModelInfo;
use crate::config::{Activation, MobileNetConfig};
use crate::error::ModelError;
use crate::layers::{Hwc, Layer, LayerKind};
use crate::preprocess::Preprocessing;
use crate::weights::ModelFile;

mod fuse;
mod op;
mod pipeline;
mod precision;
mod runner;
mod session;

pub use fuse::Fusion;
pub use precision::{Precision, PrecisionUnsupported};
pub use session::Session;

use fuse::{fuse_pipeline, fuse_separable, PIPELINE_MIN_BYTES};
use op::{Conv, Depthwise, Gemm, Op, IM2COL_MIN_CIN};

/// One layer of the execution plan.
#[derive(Debug)]
pub struct PlannedLayer {
    /// Layer-table name.
    pub name: String,
    /// What it computes; `Pointwise` for several layers run together (a depthwise + pointwise
    /// pair, a pipeline: see [`PlannedLayer::step_kind`]), whose `input` is the first layer's.
    pub kind: LayerKind,
    /// Input shape per image.
    pub input: Hwc,
    /// Output shape per image.
    pub output: Hwc,
    /// Mult-Adds per image.
    pub mult_adds: u64,
    /// Layer-table name of the last layer the step computes (the one whose output it writes).
    pub last: String,
    op: Op,
    min: f32,
    max: f32,
}

impl PlannedLayer {
    fn new(layer: Layer, op: Op, (min, max): (f32, f32)) -> PlannedLayer {
        PlannedLayer {
            mult_adds: layer.cost().mult_adds,
            last: layer.name.clone(),
            name: layer.name,
            kind: layer.kind,
            input: layer.input,
            output: layer.output,
            op,
            min,
            max,
        }
    }

    /// What the step runs, for reports: a layer kind's name, `dw+pw` for a fused separable
    /// pair, `pipeline` for a row pipeline.
    pub fn step_kind(&self) -> &'static str {
        match self.op {
            Op::Pipeline(_) => "pipeline",
            Op::Separable(_) => "dw+pw",
            _ => self.kind.name(),
        }
    }
}

/// A model ready for inference: batch norm folded, weights packed for one instruction set.
#[derive(Debug)]
pub struct InferenceModel {
    info: ModelInfo,
    isa: Isa,
    precision: Precision,
    layers: Vec<PlannedLayer>,
    heads: Vec<Head>,
}

/// A convolution to plan, its batch norm already folded into `weights` and `bias`.
#[derive(Debug)]
pub(crate) struct ConvPlan {
    pub layer: Layer,
    /// In the model file's layout (`[k, k, cin, cout]`, `[k, k, c]` or `[cin, cout]`).
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    /// `None`: linear.
    pub activation: Option<Activation>,
}

/// A 1×1 convolution with a bias and no activation reading the output of layer `after`.
#[derive(Debug)]
pub(crate) struct HeadPlan {
    pub after: String,
    /// `[cin, cout]`.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A planned head: a GEMM over the output of step `step`.
#[derive(Debug)]
struct Head {
    step: usize,
    /// Pixels per image of the map it reads.
    pixels: usize,
    gemm: Gemm,
}

impl Head {
    /// Output values per image.
    fn values(&self) -> usize {
        self.pixels * self.gemm.bias.len()
    }
}

/// No clamp: a linear layer.
const LINEAR: (f32, f32) = (f32::NEG_INFINITY, f32::INFINITY);

/// The clamp an activation applies.
fn clamp(activation: Option<Activation>) -> (f32, f32) {
    match activation {
        None => LINEAR,
        Some(Activation::Relu) => (0.0, f32::INFINITY),
        Some(Activation::Relu6) => (0.0, 6.0),
    }
}

/// Multiplies each row of `w` (`[.., cout]`, output channel last) by `scale`.
pub(crate) fn scale_columns(w: &[f32], scale: &[f32]) -> Vec<f32> {
    w.chunks_exact(scale.len())
        .flat_map(|row| row.iter().zip(scale).map(|(x, s)| x * s))
        .collect()
}

impl InferenceModel {
    /// Plans `model` for the best instruction set of this CPU.
    ///
    /// # Errors
    ///
    /// A weight the layer table needs is missing or of the wrong size.
    pub fn new(model: &ModelFile) -> Result<InferenceModel, ModelError> {
        InferenceModel::with_isa(model, Isa::detect())
    }

    /// Plans `model` for a given instruction set (tests compare them).
    ///
    /// # Errors
    ///
    /// As [`InferenceModel::new`].
    pub fn with_isa(model: &ModelFile, isa: Isa) -> Result<InferenceModel, ModelError> {
        InferenceModel::with_options(model, isa, Fusion::Pipeline)
    }

    /// Plans `model` for the best instruction set of this CPU, fusing layers as `fusion` says.
    ///
    /// # Errors
    ///
    /// As [`InferenceModel::new`].
    pub fn with_fusion(model: &ModelFile, fusion: Fusion) -> Result<InferenceModel, ModelError> {
        InferenceModel::with_options(model, Isa::detect(), fusion)
    }

    /// Plans `model` for `isa`, fusing layers as `fusion` says. Without fusion every layer's
    /// output is materialised, which is what observers of per-layer activations need.
    ///
    /// # Errors
    ///
    /// As [`InferenceModel::new`].
    pub fn with_options(
        model: &ModelFile,
        isa: Isa,
        fusion: Fusion,
    ) -> Result<InferenceModel, ModelError> {
        InferenceModel::plan(model, isa, fusion, PIPELINE_MIN_BYTES)
    }

    /// [`InferenceModel::with_options`] with the pipeline's size threshold as a parameter
    /// (tests plan pipelines for small models).
    fn plan(
        model: &ModelFile,
        isa: Isa,
        fusion: Fusion,
        pipeline_min_bytes: usize,
    ) -> Result<Self, ModelError> {
        let config = model.config;
        let mut fc = None;
        let mut convs = Vec::new();
        for layer in config.layers() {
            match layer.kind {
                LayerKind::AvgPool => {}
                LayerKind::Fc => fc = Some(layer),
                _ => {
                    let w = model.conv(&layer)?;
                    let (scale, bias) = w.folded_bn(model.bn_epsilon);
                    convs.push(ConvPlan {
                        weights: scale_columns(w.weight, &scale),
                        bias,
                        activation: Some(config.activation()),
                        layer,
                    });
                }
            }
        }
        let info = ModelInfo {
            config,
            preprocessing: model.preprocessing,
            labels: model.labels.clone(),
        };
        let mut plan = InferenceModel::from_plans(info, isa, fusion, convs, Vec::new())?;
        if fusion == Fusion::Pipeline {
            plan.layers = fuse_pipeline(plan.layers, pipeline_min_bytes, usize::MAX);
        }
        if let Some(layer) = fc {
            let fc = model.fc(&layer)?;
            let (cin, classes) = (layer.input[2], layer.output[2]);
            let pool_layer = config
                .layers()
                .into_iter()
                .find(|l| l.kind == LayerKind::AvgPool);
            if let Some(pool) = pool_layer {
                plan.layers
                    .push(PlannedLayer::new(pool, Op::AvgPool, LINEAR));
            }
            let op = Op::Fc(Gemm {
                weights: PackedB::new(isa, fc.weight, cin, classes),
                bias: fc.bias.to_vec(),
            });
            plan.layers.push(PlannedLayer::new(layer, op, LINEAR));
        }
        Ok(plan)
    }

    /// Plans a chain of convolutions whose batch norms are already folded (`convs`, in order),
    /// with `heads` reading the outputs of some of them (a detector's box and class predictors).
    /// Separable pairs are fused as `fusion` says; the row pipeline is left to the caller,
    /// since it could swallow a layer a head reads.
    ///
    /// # Errors
    ///
    /// A weight or bias of the wrong size, or a head reading a layer the chain does not have
    /// or with the wrong number of input channels.
    pub(crate) fn from_plans(
        info: ModelInfo,
        isa: Isa,
        fusion: Fusion,
        convs: Vec<ConvPlan>,
        heads: Vec<HeadPlan>,
    ) -> Result<Self, ModelError> {
        let padding = info.config.padding();
        let bad = |reason: String| ModelError::Metadata {
            path: "<model>".into(),
            reason,
        };
        let mut layers = Vec::with_capacity(convs.len());
        for ConvPlan {
            layer,
            weights,
            bias,
            activation,
        } in convs
        {
            let (cin, cout, k) = (layer.input[2], layer.output[2], layer.kernel);
            let want = match layer.kind {
                LayerKind::Conv => k * k * cin * cout,
                LayerKind::Depthwise => k * k * cin,
                _ => cin * cout,
            };
            if weights.len() != want || bias.len() != cout {
                return Err(bad(format!(
                    "layer {}: {} weights and {} biases, expected {want} and {cout}",
                    layer.name,
                    weights.len(),
                    bias.len()
                )));
            }
            let op = match layer.kind {
                LayerKind::Conv => Op::Conv(Conv {
                    geometry: layer.geometry(padding),
                    shape: ConvShape { k, cin, cout },
                    packed: (cin >= IM2COL_MIN_CIN)
                        .then(|| PackedB::new(isa, &weights, k * k * cin, cout)),
                    weights,
                    bias,
                }),
                LayerKind::Depthwise => Op::Depthwise(Depthwise {
                    geometry: layer.geometry(padding),
                    weights: AlignedVec::from_slice(&weights),
                    bias: AlignedVec::from_slice(&bias),
                }),
                LayerKind::Pointwise => Op::Pointwise(Gemm {
                    weights: PackedB::new(isa, &weights, cin, cout),
                    bias,
                }),
                LayerKind::AvgPool | LayerKind::Fc => {
                    return Err(bad(format!("layer {} is not a convolution", layer.name)))
                }
            };
            layers.push(PlannedLayer::new(layer, op, clamp(activation)));
        }
        let layers = match fusion {
            Fusion::None => layers,
            Fusion::Separable | Fusion::Pipeline => fuse_separable(layers),
        };
        let heads = heads
            .into_iter()
            .map(|head| {
                let step = layers
                    .iter()
                    .position(|l| l.last == head.after)
                    .ok_or_else(|| bad(format!("no layer {} for a head to read", head.after)))?;
                let [h, w, cin] = layers[step].output;
                let cout = head.bias.len();
                if head.weights.len() != cin * cout {
                    return Err(bad(format!(
                        "head on {}: {} weights, expected {cin} × {cout}",
                        head.after,
                        head.weights.len()
                    )));
                }
                Ok(Head {
                    step,
                    pixels: h * w,
                    gemm: Gemm {
                        weights: PackedB::new(isa, &head.weights, cin, cout),
                        bias: head.bias,
                    },
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(InferenceModel {
            info,
            isa,
            precision: Precision::F32,
            layers,
            heads,
        })
    }

    /// Joins the leading layers into a row pipeline where that pays (see [`Fusion`]), ending
    /// it at the first layer a head reads at the latest.
    pub(crate) fn fuse_pipeline(&mut self) {
        let max_steps = self
            .heads
            .iter()
            .map(|h| h.step + 1)
            .min()
            .unwrap_or(usize::MAX);
        let layers = std::mem::take(&mut self.layers);
        let before = layers.len();
        self.layers = fuse_pipeline(layers, PIPELINE_MIN_BYTES, max_steps);
        let joined = before - self.layers.len();
        for head in &mut self.heads {
            head.step -= joined;
        }
    }

    /// The network's configuration.
    pub fn config(&self) -> &MobileNetConfig {
        &self.info.config
    }
    /// The instruction set the kernels run with.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// The model's preprocessing.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.info.preprocessing
    }
    /// Class labels, if the model file has them.
    pub fn labels(&self) -> Option<&[String]> {
        self.info.labels.as_deref()
    }
    /// The execution plan.
    pub fn layers(&self) -> &[PlannedLayer] {
        &self.layers
    }
    /// Values per image of the largest input or output of a step (of every pipeline stage
    /// too, with `stages`: sessions that run a pipeline stage by stage hold its activations).
    fn largest_values(&self, stages: bool) -> usize {
        self.layers
            .iter()
            .flat_map(|l| match &l.op {
                Op::Pipeline(s) if stages => s.iter().map(|s| &s.layer).collect(),
                _ => vec![l],
            })
            .flat_map(|l| [l.input, l.output])
            .map(|s| s.iter().product::<usize>())
            .max()
            .unwrap_or(0)
    }

    /// Bytes of the activation buffers a session of `batch` images allocates at most (two
    /// ping-pong buffers of the largest step), to check against the memory available first.
    pub fn activation_bytes(&self, batch: usize) -> u64 {
        2 * 4 * self.largest_values(true) as u64 * batch.max(1) as u64
    }

    /// Values per image in the network's output (classes, or the final feature map).
    pub fn output_len(&self) -> usize {
        self.layers.last().map_or(0, |l| l.output.iter().product())
    }
    /// Values per image each head writes, in the order they were planned.
    pub fn head_values(&self) -> Vec<usize> {
        self.heads.iter().map(Head::values).collect()
    }
    /// Values per image in the input (`resolution² · 3`).
    pub fn input_len(&self) -> usize {
        self.info.config.resolution() * self.info.config.resolution() * 3
    }

    /// A session running `batch` images at a time on `threads` threads (0: all cores).
    pub fn session(&self, batch: usize, threads: usize) -> Session<'_> {
        Session::new(self, batch, threads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Padding, Stem};

    #[test]
    fn pipelines_are_planned_where_activations_outgrow_l2() {
        let kinds = |alpha, res| {
            let config = MobileNetConfig::new(alpha, res).unwrap();
            let plan = InferenceModel::new(&ModelFile::random(config, 1)).expect("plan");
            plan.layers
                .iter()
                .map(|l| l.step_kind())
                .collect::<Vec<_>>()
        };
        // 1.0-224: block 1 reads 1.6 MB and writes 3.2 MB; 0.5-160 moves at most 1.2 MB.
        assert_eq!(kinds(1.0, 224)[0], "pipeline");
        assert!(!kinds(0.5, 160).contains(&"pipeline"));
    }

    /// Every fusion computes each value with the same kernels in the same order, so their
    /// outputs are identical, for any batch, thread count and band split.
    #[test]
    fn fusions_give_identical_outputs() {
        let configs = [
            (0.25, 128, Stem::Standard, Padding::TfSame),
            (0.5, 96, Stem::Standard, Padding::Symmetric),
            (0.25, 37, Stem::Standard, Padding::TfSame),
            (0.5, 32, Stem::SmallInput, Padding::Symmetric),
            (0.75, 33, Stem::SmallInput, Padding::TfSame),
        ];
        for (alpha, res, stem, padding) in configs {
            let config = MobileNetConfig::new(alpha, res)
                .unwrap()
                .with_classes(10)
                .unwrap()
                .with_stem(stem)
                .with_padding(padding);
            let file = ModelFile::random(config, 7);
            let plain =
                InferenceModel::with_options(&file, Isa::detect(), Fusion::None).expect("plan");
            for fusion in [Fusion::Separable, Fusion::Pipeline] {
                let fused = InferenceModel::plan(&file, Isa::detect(), fusion, 0).expect("plan");
                if fusion == Fusion::Pipeline {
                    assert!(
                        matches!(fused.layers[0].op, Op::Pipeline(_)),
                        "{alpha} {res}: no pipeline planned"
                    );
                }
                for (batch, threads) in [(1, 1), (1, 2), (1, 3), (3, 2), (4, 2)] {
                    let input: Vec<f32> = (0..batch * plain.input_len())
                        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
                        .collect();
                    let want = plain.session(batch, threads).run(&input).to_vec();
                    let got = fused.session(batch, threads).run(&input).to_vec();
                    assert_eq!(
                        got, want,
                        "{alpha} {res} {stem:?} {padding:?} {fusion:?} batch {batch} threads {threads}"
                    );
                }
            }
        }
    }
}
