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

use mobilenet_kernels::aligned::AlignedVec;
use mobilenet_kernels::conv::ConvShape;
use mobilenet_kernels::gemm::PackedB;
use mobilenet_kernels::Isa;

use crate::classifier::ModelInfo;
use crate::config::{Activation, MobileNetConfig};
use crate::error::ModelError;
use crate::layers::{Hwc, LayerKind};
use crate::preprocess::Preprocessing;
use crate::weights::ModelFile;

mod fuse;
mod op;
mod pipeline;
mod runner;
mod session;

pub use fuse::Fusion;
pub use session::Session;

use fuse::{fuse_pipeline, fuse_separable, PIPELINE_MIN_BYTES};
use op::{Conv, Depthwise, Gemm, Op};

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
    op: Op,
    min: f32,
    max: f32,
}

impl PlannedLayer {
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
    layers: Vec<PlannedLayer>,
}

/// Multiplies each row of `w` (`[.., cout]`, output channel last) by `scale`.
fn scale_columns(w: &[f32], scale: &[f32]) -> Vec<f32> {
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
        let clamp = match config.activation() {
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Relu6 => (0.0, 6.0),
        };
        let linear = (f32::NEG_INFINITY, f32::INFINITY);
        let layers = config
            .layers()
            .into_iter()
            .map(|layer| {
                let (op, (min, max)) = match layer.kind {
                    LayerKind::AvgPool => (Op::AvgPool, linear),
                    LayerKind::Fc => {
                        let fc = model.fc(&layer)?;
                        let (cin, classes) = (layer.input[2], layer.output[2]);
                        let op = Op::Fc(Gemm {
                            weights: PackedB::new(isa, fc.weight, cin, classes),
                            bias: fc.bias.to_vec(),
                        });
                        (op, linear)
                    }
                    kind => {
                        let w = model.conv(&layer)?;
                        let (scale, bias) = w.folded_bn(model.bn_epsilon);
                        let weights = scale_columns(w.weight, &scale);
                        let (cin, cout) = (layer.input[2], layer.output[2]);
                        let op = match kind {
                            LayerKind::Conv => Op::Conv(Conv {
                                geometry: layer.geometry(config.padding()),
                                shape: ConvShape {
                                    k: layer.kernel,
                                    cin,
                                    cout,
                                },
                                weights,
                                bias,
                            }),
                            LayerKind::Depthwise => Op::Depthwise(Depthwise {
                                geometry: layer.geometry(config.padding()),
                                weights: AlignedVec::from_slice(&weights),
                                bias: AlignedVec::from_slice(&bias),
                            }),
                            _ => Op::Pointwise(Gemm {
                                weights: PackedB::new(isa, &weights, cin, cout),
                                bias,
                            }),
                        };
                        (op, clamp)
                    }
                };
                Ok(PlannedLayer {
                    mult_adds: layer.cost().mult_adds,
                    name: layer.name,
                    kind: layer.kind,
                    input: layer.input,
                    output: layer.output,
                    op,
                    min,
                    max,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let layers = match fusion {
            Fusion::None => layers,
            Fusion::Separable => fuse_separable(layers),
            Fusion::Pipeline => fuse_pipeline(fuse_separable(layers), pipeline_min_bytes),
        };
        Ok(InferenceModel {
            info: ModelInfo {
                config,
                preprocessing: model.preprocessing,
                labels: model.labels.clone(),
            },
            isa,
            layers,
        })
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
