//! Inference: a model with batch norm folded and weights packed, and sessions that run it.
//!
//! [`InferenceModel::new`] folds every batch norm into its convolution's weights and a bias
//! (`scale = γ / √(σ² + ε)`, `w' = w · scale`, `b' = β − μ · scale`), packs the 1×1 and FC
//! weights for the GEMM microkernel of the detected instruction set, and keeps the layer list
//! as a flat plan. A [`Session`] owns the activation buffers for one batch size (two
//! ping-pong buffers sized for the largest layer, allocated once) and a thread pool.

use std::time::{Duration, Instant};

use mobilenet_kernels::aligned::AlignedVec;
use mobilenet_kernels::conv::{conv2d, ConvShape};
use mobilenet_kernels::dwconv::{dwconv3x3, dwconv3x3_ring};
use mobilenet_kernels::gemm::{column_blocks, gemm, ColumnBlock, PackedB};
use mobilenet_kernels::pool::global_avg_pool;
use mobilenet_kernels::{ConvGeometry, Epilogue, Isa};

use crate::config::{Activation, MobileNetConfig, Padding};
use crate::layers::{Hwc, Layer, LayerKind, KERNEL};
use crate::pool::{split, Parts, SpinPool};
use crate::preprocess::Preprocessing;
use crate::weights::{ModelFile, Tensor};

/// What one planned layer computes.
#[derive(Debug)]
enum Op {
    Conv {
        geometry: ConvGeometry,
        shape: ConvShape,
        weights: Vec<f32>,
        bias: Vec<f32>,
    },
    Depthwise {
        geometry: ConvGeometry,
        /// Aligned: the kernel loads each tap and bias vector once per group of columns.
        weights: AlignedVec,
        bias: AlignedVec,
    },
    Pointwise {
        weights: PackedB,
        bias: Vec<f32>,
    },
    AvgPool,
    Fc {
        weights: PackedB,
        bias: Vec<f32>,
    },
    /// A depthwise layer and the pointwise layer after it, run band by band of output rows so
    /// that the depthwise output stays in cache instead of going through memory.
    Separable {
        depthwise: Box<Op>,
        pointwise: Box<Op>,
        /// Output rows per band.
        band_rows: usize,
    },
    /// Leading layers (the stem and separable pairs) run as a row pipeline: each stage keeps
    /// only the last few rows of its output in a small ring, from which the next stage reads.
    Pipeline(Vec<Stage>),
}

/// One step of an [`Op::Pipeline`].
#[derive(Debug)]
struct Stage {
    /// The step run on its own: `Op::Conv` (first stage only: it reads the whole image) or
    /// `Op::Separable`. Sessions whose threads would share an image's rows run the stages
    /// one after the other like this (see [`Session`]).
    layer: PlannedLayer,
    /// Geometry of the stage's 3×3 convolution (rows of input each output row needs).
    geometry: ConvGeometry,
    /// Output rows computed per call.
    chunk: usize,
    /// Rows of the output ring the next stage reads from (0 for the last stage, which writes
    /// the pipeline's output).
    ring: usize,
}

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
            Op::Separable { .. } => "dw+pw",
            _ => self.kind.name(),
        }
    }
}

/// Which layers the plan fuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fusion {
    /// Every layer runs on its own and writes its whole output.
    None,
    /// Depthwise + pointwise pairs whose pointwise weights fit in L2 run band by band.
    Separable,
    /// As `Separable`, and the stem and the fused pairs after it run as one row pipeline, so
    /// that their large activations never leave the cache (the default).
    Pipeline,
}

/// Largest pointwise weight matrix (bytes) fused with its depthwise layer: it must stay in
/// L2 while the bands stream past it (blocks 1–5 at α = 1; later blocks have activations
/// small enough to stay in cache without fusion, and weights too big to re-read per band).
const FUSE_MAX_WEIGHT_BYTES: usize = 256 << 10;
/// Bytes of depthwise output per band: comfortably inside L1/L2 next to the weights.
const FUSE_BAND_BYTES: usize = 48 << 10;
/// Fewest GEMM rows per band (a few MR = 12 tiles).
const FUSE_MIN_BAND_PIXELS: usize = 48;

fn fuse_separable(layers: Vec<PlannedLayer>) -> Vec<PlannedLayer> {
    let mut out: Vec<PlannedLayer> = Vec::with_capacity(layers.len());
    for layer in layers {
        let fusable = layer.kind == LayerKind::Pointwise
            && layer.input[2] * layer.output[2] * 4 <= FUSE_MAX_WEIGHT_BYTES
            && out
                .last()
                .is_some_and(|dw| dw.kind == LayerKind::Depthwise && dw.output == layer.input);
        if !fusable {
            out.push(layer);
            continue;
        }
        let Some(dw) = out.pop() else {
            unreachable!("checked above")
        };
        let [_, ow, c] = dw.output;
        let row_bytes = ow * c * 4;
        let band_rows = (FUSE_BAND_BYTES / row_bytes)
            .max(FUSE_MIN_BAND_PIXELS.div_ceil(ow))
            .clamp(1, dw.output[0]);
        // Both layers end in the same activation, so the step's clamp serves both.
        debug_assert!(dw.min == layer.min && dw.max == layer.max);
        out.push(PlannedLayer {
            name: format!("{}+pointwise", dw.name),
            kind: LayerKind::Pointwise,
            input: dw.input,
            output: layer.output,
            mult_adds: dw.mult_adds + layer.mult_adds,
            op: Op::Separable {
                depthwise: Box::new(dw.op),
                pointwise: Box::new(layer.op),
                band_rows,
            },
            min: layer.min,
            max: layer.max,
        });
    }
    out
}

/// Most stages in one pipeline (MobileNet v1 has the stem and 13 separable blocks): the
/// per-call state of a pipeline lives in arrays of this size instead of allocations.
const MAX_STAGES: usize = 14;

/// Smallest activation traffic (bytes of input + output of one step, per image) for which the
/// leading layers run as a pipeline: L2's size. Below it the activations stay in L2 anyway and
/// the pipeline's per-row calls only cost (0.25-128 and 0.5-160: 3–10% slower at 1 thread);
/// above it they went through L3 (1.0-224: block 1 reads 1.6 MB and writes 3.2 MB).
const PIPELINE_MIN_BYTES: usize = 2 << 20;

/// Joins the stem and the fused separable pairs right after it into one row pipeline, if one of
/// them moves at least `min_bytes` of activations per image.
fn fuse_pipeline(layers: Vec<PlannedLayer>, min_bytes: usize) -> Vec<PlannedLayer> {
    let lead = layers
        .iter()
        .enumerate()
        .take_while(|&(i, l)| match l.op {
            Op::Conv { .. } => i == 0,
            Op::Separable { .. } => true,
            _ => false,
        })
        .count()
        .min(MAX_STAGES);
    let traffic = layers[..lead]
        .iter()
        .map(|l| 4 * (l.input.iter().product::<usize>() + l.output.iter().product::<usize>()))
        .max()
        .unwrap_or(0);
    if lead < 2 || !matches!(layers[0].op, Op::Conv { .. }) || traffic < min_bytes {
        return layers;
    }
    let mut rest = layers;
    let tail = rest.split_off(lead);
    let (first, last) = (&rest[0], &rest[lead - 1]);
    let name = format!("{}..{}", first.name, last.name);
    let (input, output, min, max) = (first.input, last.output, last.min, last.max);
    let mult_adds = rest.iter().map(|l| l.mult_adds).sum();
    let mut stages: Vec<Stage> = rest
        .into_iter()
        .map(|l| {
            let geometry = match &l.op {
                Op::Conv { geometry, .. } => *geometry,
                Op::Separable { depthwise, .. } => match &**depthwise {
                    Op::Depthwise { geometry, .. } => *geometry,
                    _ => unreachable!("a separable step starts with a depthwise op"),
                },
                _ => unreachable!("only conv and separable steps were taken"),
            };
            Stage {
                chunk: FUSE_MIN_BAND_PIXELS
                    .div_ceil(l.output[1])
                    .clamp(1, l.output[0]),
                geometry,
                layer: l,
                ring: 0,
            }
        })
        .collect();
    // Stage s − 1's ring must hold every input row of stage s's chunk (its 3×3 window over
    // `(chunk − 1)·stride + 3` rows) plus the rows stage s − 1 computed past them in its last
    // chunk (< its chunk); a multiple of the chunk so that chunks do not wrap around.
    for s in 1..stages.len() {
        let (chunk, stride) = (stages[s].chunk, stages[s].geometry.stride);
        let prev = &mut stages[s - 1];
        let rows = (chunk - 1) * stride + KERNEL + prev.chunk - 1;
        prev.ring = rows.div_ceil(prev.chunk) * prev.chunk;
    }
    let mut out = Vec::with_capacity(tail.len() + 1);
    out.push(PlannedLayer {
        name,
        kind: LayerKind::Pointwise,
        input,
        output,
        mult_adds,
        op: Op::Pipeline(stages),
        min,
        max,
    });
    out.extend(tail);
    out
}

/// A model ready for inference: batch norm folded, weights packed for one instruction set.
#[derive(Debug)]
pub struct InferenceModel {
    config: MobileNetConfig,
    isa: Isa,
    preprocessing: Preprocessing,
    labels: Option<Vec<String>>,
    layers: Vec<PlannedLayer>,
}

fn tensor<'a>(model: &'a ModelFile, name: &str) -> &'a Tensor {
    // ModelFile::validate guarantees every required tensor exists with its shape.
    &model.tensors[name]
}

/// Folds the batch norm after `layer` into per-output-channel (scale, bias).
pub(crate) fn fold_bn(model: &ModelFile, layer: &Layer) -> (Vec<f32>, Vec<f32>) {
    let get = |n: &str| &tensor(model, &format!("{}/bn/{n}", layer.name)).data;
    let (gamma, beta) = (get("gamma"), get("beta"));
    let (mean, var) = (get("moving_mean"), get("moving_variance"));
    let conv_bias = model.tensors.get(&format!("{}/bias", layer.name));
    let eps = model.bn_epsilon as f64;
    let mut scale = Vec::with_capacity(gamma.len());
    let mut bias = Vec::with_capacity(gamma.len());
    for c in 0..gamma.len() {
        let s = gamma[c] as f64 / (var[c] as f64 + eps).sqrt();
        let b0 = conv_bias.map_or(0.0, |t| t.data[c] as f64);
        scale.push(s as f32);
        bias.push((beta[c] as f64 + (b0 - mean[c] as f64) * s) as f32);
    }
    (scale, bias)
}

/// Multiplies each row of `w` (`[.., cout]`, output channel last) by `scale`.
fn scale_columns(w: &[f32], scale: &[f32]) -> Vec<f32> {
    w.chunks_exact(scale.len())
        .flat_map(|row| row.iter().zip(scale).map(|(x, s)| x * s))
        .collect()
}

/// The geometry of a 3×3 convolution of `input` with `stride` under a padding convention.
pub(crate) fn geometry(padding: Padding, input: Hwc, stride: usize) -> ConvGeometry {
    match padding {
        Padding::TfSame => ConvGeometry::tf_same(input[0], input[1], KERNEL, stride),
        Padding::Symmetric => {
            ConvGeometry::symmetric(input[0], input[1], KERNEL, stride, KERNEL / 2)
        }
    }
}

impl InferenceModel {
    /// Plans `model` for the best instruction set of this CPU.
    pub fn new(model: &ModelFile) -> InferenceModel {
        InferenceModel::with_isa(model, Isa::detect())
    }

    /// Plans `model` for a given instruction set (tests compare them).
    ///
    /// # Panics
    ///
    /// If `isa` is not supported by this CPU.
    pub fn with_isa(model: &ModelFile, isa: Isa) -> InferenceModel {
        InferenceModel::with_options(model, isa, Fusion::Pipeline)
    }

    /// Plans `model` for `isa`, fusing layers as `fusion` says. Without fusion every layer's
    /// output is materialised, which is what observers of per-layer activations need.
    ///
    /// # Panics
    ///
    /// If `isa` is not supported by this CPU.
    pub fn with_options(model: &ModelFile, isa: Isa, fusion: Fusion) -> InferenceModel {
        InferenceModel::plan(model, isa, fusion, PIPELINE_MIN_BYTES)
    }

    /// [`InferenceModel::with_options`] with the pipeline's size threshold as a parameter
    /// (tests plan pipelines for small models).
    fn plan(model: &ModelFile, isa: Isa, fusion: Fusion, pipeline_min_bytes: usize) -> Self {
        assert!(isa.is_supported(), "{isa} is not supported on this CPU");
        let config = model.config;
        let (min, max) = match config.activation() {
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Relu6 => (0.0, 6.0),
        };
        let layers = config
            .layers()
            .into_iter()
            .map(|layer| {
                let weight_name = format!("{}/weight", layer.name);
                let weight = || &tensor(model, &weight_name).data;
                let (op, clamp) = match layer.kind {
                    LayerKind::Conv => {
                        let (scale, bias) = fold_bn(model, &layer);
                        let op = Op::Conv {
                            geometry: geometry(config.padding(), layer.input, layer.stride),
                            shape: ConvShape {
                                k: layer.kernel,
                                cin: layer.input[2],
                                cout: layer.output[2],
                            },
                            weights: scale_columns(weight(), &scale),
                            bias,
                        };
                        (op, (min, max))
                    }
                    LayerKind::Depthwise => {
                        let (scale, bias) = fold_bn(model, &layer);
                        let op = Op::Depthwise {
                            geometry: geometry(config.padding(), layer.input, layer.stride),
                            weights: AlignedVec::from_slice(&scale_columns(weight(), &scale)),
                            bias: AlignedVec::from_slice(&bias),
                        };
                        (op, (min, max))
                    }
                    LayerKind::Pointwise => {
                        let (scale, bias) = fold_bn(model, &layer);
                        let folded = scale_columns(weight(), &scale);
                        let (cin, cout) = (layer.input[2], layer.output[2]);
                        let op = Op::Pointwise {
                            weights: PackedB::new(isa, &folded, cin, cout),
                            bias,
                        };
                        (op, (min, max))
                    }
                    LayerKind::AvgPool => (Op::AvgPool, (f32::NEG_INFINITY, f32::INFINITY)),
                    LayerKind::Fc => {
                        let (cin, classes) = (layer.input[2], layer.output[2]);
                        let op = Op::Fc {
                            weights: PackedB::new(isa, weight(), cin, classes),
                            bias: tensor(model, "fc/bias").data.clone(),
                        };
                        (op, (f32::NEG_INFINITY, f32::INFINITY))
                    }
                };
                PlannedLayer {
                    mult_adds: layer.cost().mult_adds,
                    name: layer.name,
                    kind: layer.kind,
                    input: layer.input,
                    output: layer.output,
                    op,
                    min: clamp.0,
                    max: clamp.1,
                }
            })
            .collect();
        let layers = match fusion {
            Fusion::None => layers,
            Fusion::Separable => fuse_separable(layers),
            Fusion::Pipeline => fuse_pipeline(fuse_separable(layers), pipeline_min_bytes),
        };
        InferenceModel {
            config,
            isa,
            preprocessing: model.preprocessing,
            labels: model.labels.clone(),
            layers,
        }
    }

    /// The network's configuration.
    pub fn config(&self) -> &MobileNetConfig {
        &self.config
    }
    /// The instruction set the kernels run with.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// The model's preprocessing.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.preprocessing
    }
    /// Class labels, if the model file has them.
    pub fn labels(&self) -> Option<&[String]> {
        self.labels.as_deref()
    }
    /// The execution plan.
    pub fn layers(&self) -> &[PlannedLayer] {
        &self.layers
    }
    /// Values per image in the network's output (classes, or the final feature map).
    pub fn output_len(&self) -> usize {
        self.layers.last().map_or(0, |l| l.output.iter().product())
    }
    /// Values per image in the input (`resolution² · 3`).
    pub fn input_len(&self) -> usize {
        self.config.resolution() * self.config.resolution() * 3
    }

    /// A session running `batch` images at a time on `threads` threads (0: all cores).
    pub fn session(&self, batch: usize, threads: usize) -> Session<'_> {
        Session::new(self, batch, threads)
    }
}

/// Per-image output size (values) from which a leading layer runs image by image in a batch:
/// 128 K values (512 KB), a quarter of L2.
const IMAGE_MAJOR_MIN_OUTPUT: usize = 128 << 10;

/// Runs an [`InferenceModel`] on batches of images, reusing its buffers between calls.
#[derive(Debug)]
pub struct Session<'m> {
    model: &'m InferenceModel,
    batch: usize,
    pool: SpinPool,
    ping: AlignedVec,
    pong: AlignedVec,
    /// Number of leading layers run one image at a time (0 for batch 1).
    image_major: usize,
    /// Whether pipelines stream rows (each thread takes whole images) or run their stages one
    /// after the other (threads would share an image's rows and recompute the rows at their
    /// borders in every stage: a third more work for 0.25-128 on 2 threads).
    stream: bool,
    /// Buffers for one image, for those layers.
    small_ping: AlignedVec,
    small_pong: AlignedVec,
    profile: Option<Vec<Duration>>,
}

impl<'m> Session<'m> {
    fn new(model: &'m InferenceModel, batch: usize, threads: usize) -> Session<'m> {
        let batch = batch.max(1);
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        // With one thread everything runs on the caller's thread: the pool has no workers.
        let pool = SpinPool::new(threads);
        let stream = batch.is_multiple_of(threads);
        let largest = model
            .layers
            .iter()
            .flat_map(|l| match &l.op {
                Op::Pipeline(stages) if !stream => stages.iter().map(|s| &s.layer).collect(),
                _ => vec![l],
            })
            .flat_map(|l| [l.input, l.output])
            .map(|s| s.iter().product::<usize>())
            .max()
            .unwrap_or(0);
        // Image-major prefix: the leading layers whose output per image is larger than their
        // weights (at 1.0-224: blocks 0–5, 0.8–3.2 MB of activations per image).
        let image_major = if batch > 1 {
            model
                .layers
                .iter()
                .take_while(|l| {
                    // A pipeline keeps its activations in cache by itself, and run on the whole
                    // batch its threads take whole images instead of sharing each one's rows.
                    !matches!(l.op, Op::Pipeline(_))
                        && l.output.iter().product::<usize>() >= IMAGE_MAJOR_MIN_OUTPUT
                })
                .count()
        } else {
            0
        };
        let small = if image_major > 0 { largest } else { 0 };
        Session {
            model,
            batch,
            pool,
            ping: AlignedVec::zeros(largest * batch),
            pong: AlignedVec::zeros(largest * batch),
            image_major,
            stream,
            small_ping: AlignedVec::zeros(small),
            small_pong: AlignedVec::zeros(small),
            profile: None,
        }
    }

    /// Images per call.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Threads used.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Starts recording the time spent in each layer (summed over calls).
    pub fn enable_profiling(&mut self) {
        self.profile = Some(vec![Duration::ZERO; self.model.layers.len()]);
    }

    /// Time per layer since profiling was enabled, in plan order.
    pub fn profile(&self) -> Option<&[Duration]> {
        self.profile.as_deref()
    }

    /// Runs `layer` on the batch in `ping` (`len` values), leaving its output there; returns
    /// the output's length.
    fn step(&mut self, layer: &PlannedLayer, len: usize) -> usize {
        let out_len = self.batch * layer.output.iter().product::<usize>();
        let (src, dst) = (&self.ping[..len], &mut self.pong[..out_len]);
        run_layer(self.model.isa, layer, self.batch, src, dst, &mut self.pool);
        std::mem::swap(&mut self.ping, &mut self.pong);
        out_len
    }

    /// Runs the network on `input` (`batch` preprocessed images, NHWC) and returns the
    /// outputs (`batch × output_len`: logits, or features without a head).
    ///
    /// # Panics
    ///
    /// If `input.len() != batch · input_len()`.
    pub fn run(&mut self, input: &[f32]) -> &[f32] {
        self.run_observed(input, &mut |_, _| {})
    }

    /// Like [`Session::run`], calling `observe(layer, output)` after every layer with that
    /// layer's output for the whole batch (for batches of more than one image, the first
    /// layers run image by image and are observed once per image).
    pub fn run_observed(
        &mut self,
        input: &[f32],
        observe: &mut dyn FnMut(&PlannedLayer, &[f32]),
    ) -> &[f32] {
        let batch = self.batch;
        assert_eq!(
            input.len(),
            batch * self.model.input_len(),
            "input must be batch × resolution² × 3 values"
        );
        let model = self.model;
        let prefix = self.image_major;
        // Layers with large activations and small weights run one image at a time, so that
        // each image's activations stay in cache between layers; the rest run on the batch,
        // so that each weight matrix is read once per batch.
        if prefix > 0 {
            let in_len = model.input_len();
            let out_len: usize = model.layers[prefix - 1].output.iter().product();
            for image in 0..batch {
                let mut cur_len = in_len;
                self.small_ping[..in_len].copy_from_slice(&input[image * in_len..][..in_len]);
                for (i, layer) in model.layers[..prefix].iter().enumerate() {
                    let start = Instant::now();
                    let len: usize = layer.output.iter().product();
                    let (src, dst) = (&self.small_ping[..cur_len], &mut self.small_pong[..len]);
                    run_layer(model.isa, layer, 1, src, dst, &mut self.pool);
                    if let Some(p) = &mut self.profile {
                        p[i] += start.elapsed();
                    }
                    std::mem::swap(&mut self.small_ping, &mut self.small_pong);
                    cur_len = len;
                    observe(layer, &self.small_ping[..cur_len]);
                }
                self.ping[image * out_len..][..out_len]
                    .copy_from_slice(&self.small_ping[..out_len]);
            }
        } else {
            self.ping[..input.len()].copy_from_slice(input);
        }
        let mut cur_len = match prefix {
            0 => input.len(),
            n => batch * model.layers[n - 1].output.iter().product::<usize>(),
        };
        for (i, layer) in model.layers.iter().enumerate().skip(prefix) {
            let start = Instant::now();
            match &layer.op {
                Op::Pipeline(stages) if !self.stream => {
                    for stage in stages {
                        cur_len = self.step(&stage.layer, cur_len);
                    }
                }
                _ => cur_len = self.step(layer, cur_len),
            }
            if let Some(p) = &mut self.profile {
                p[i] += start.elapsed();
            }
            observe(layer, &self.ping[..cur_len]);
        }
        &self.ping[..cur_len]
    }
}

thread_local! {
    /// Depthwise output of one band of a fused separable step, per thread.
    static BAND: std::cell::RefCell<AlignedVec> =
        const { std::cell::RefCell::new(AlignedVec::new()) };
    /// The rings and depthwise band of a pipeline, per thread.
    static PIPE: std::cell::RefCell<AlignedVec> =
        const { std::cell::RefCell::new(AlignedVec::new()) };
}

fn run_layer(
    isa: Isa,
    layer: &PlannedLayer,
    batch: usize,
    src: &[f32],
    dst: &mut [f32],
    pool: &mut SpinPool,
) {
    let in_len: usize = layer.input.iter().product();
    let [out_h, out_w, cout] = layer.output;
    let row_len = out_w * cout;
    match &layer.op {
        Op::Conv { .. } => {
            by_rows(pool, src, dst, in_len, out_h, row_len, &|img, out, row0| {
                conv_rows(isa, &layer.op, layer.min, layer.max, img, out, row0)
            });
        }
        Op::Depthwise {
            geometry,
            weights,
            bias,
        } => {
            let epi = Epilogue::new(Some(bias), layer.min, layer.max);
            by_rows(pool, src, dst, in_len, out_h, row_len, &|img, out, row0| {
                dwconv3x3(isa, geometry, cout, img, weights, &epi, out, row0)
            });
        }
        Op::Pointwise { weights, bias } => {
            let epi = Epilogue::new(Some(bias), layer.min, layer.max);
            let m = batch * out_h * out_w;
            let cin = layer.input[2];
            // Split where it reads least: by rows every part streams all of B, by columns
            // every part reads all of A. Late layers (7×7×1024: A 200 KB, B 4 MB) go by columns.
            if cout >= m {
                gemm_by_columns(pool, m, src, cin, weights, dst, cout, &epi);
            } else {
                gemm_rows(pool, m, src, cin, weights, dst, cout, &epi);
            }
        }
        Op::Separable {
            depthwise,
            pointwise,
            band_rows,
        } => {
            let c = layer.input[2];
            by_rows(pool, src, dst, in_len, out_h, row_len, &|img, out, row0| {
                BAND.with_borrow_mut(|tmp| {
                    let band_len = band_rows * row_len;
                    for (b, band) in out.chunks_mut(band_len).enumerate() {
                        let pixels = band.len() / cout;
                        if tmp.len() < pixels * c {
                            tmp.grow(pixels * c);
                        }
                        let (first, (lo, hi)) = (row0 + b * band_rows, (layer.min, layer.max));
                        let pair = (&**depthwise, &**pointwise);
                        separable_rows(isa, pair, lo, hi, img, 0, tmp, band, first);
                    }
                });
            });
        }
        Op::Pipeline(stages) => {
            by_rows(pool, src, dst, in_len, out_h, row_len, &|img, out, row0| {
                PIPE.with_borrow_mut(|scratch| {
                    run_pipeline(isa, stages, layer.min, layer.max, img, out, row0, scratch)
                });
            });
        }
        Op::AvgPool => {
            let pixels = layer.input[0] * layer.input[1];
            let c = layer.input[2];
            for (img, out) in src.chunks_exact(in_len).zip(dst.chunks_exact_mut(c)) {
                global_avg_pool(img, pixels, c, out);
            }
        }
        Op::Fc { weights, bias } => {
            let epi = Epilogue::new(Some(bias), layer.min, layer.max);
            // At batch 1 there is one row: split the classes between threads (the layer is a
            // stream of its 4 MB of weights).
            gemm_by_columns(pool, batch, src, layer.input[2], weights, dst, cout, &epi);
        }
    }
}

/// Output rows `row0 ..` (whole rows, `out`) of a full convolution (`Op::Conv`) of `img`.
fn conv_rows(isa: Isa, op: &Op, min: f32, max: f32, img: &[f32], out: &mut [f32], row0: usize) {
    let Op::Conv {
        geometry,
        shape,
        weights,
        bias,
    } = op
    else {
        unreachable!("conv_rows runs conv steps")
    };
    let epi = Epilogue::new(Some(bias), min, max);
    conv2d(isa, geometry, *shape, img, weights, &epi, out, row0);
}

/// Output rows `row0 ..` (whole rows, `out`) of a depthwise + pointwise pair: the depthwise
/// rows into `tmp`, then the 1×1 GEMM from there into `out`. `src` is the whole input image
/// (`ring` 0) or a ring of `ring` input rows (see [`dwconv3x3_ring`]).
#[allow(clippy::too_many_arguments)]
fn separable_rows(
    isa: Isa,
    (depthwise, pointwise): (&Op, &Op),
    min: f32,
    max: f32,
    src: &[f32],
    ring: usize,
    tmp: &mut [f32],
    out: &mut [f32],
    row0: usize,
) {
    let (
        Op::Depthwise {
            geometry,
            weights: dw_weights,
            bias: dw_bias,
        },
        Op::Pointwise {
            weights: pw_weights,
            bias: pw_bias,
        },
    ) = (depthwise, pointwise)
    else {
        unreachable!("fuse_separable only pairs a depthwise with a pointwise op")
    };
    let (c, cout) = (pw_weights.k(), pw_weights.n());
    let pixels = out.len() / cout;
    let tmp = &mut tmp[..pixels * c];
    let dw_epi = Epilogue::new(Some(dw_bias), min, max);
    if ring == 0 {
        dwconv3x3(isa, geometry, c, src, dw_weights, &dw_epi, tmp, row0);
    } else {
        dwconv3x3_ring(isa, geometry, c, src, ring, dw_weights, &dw_epi, tmp, row0);
    }
    let pw_epi = Epilogue::new(Some(pw_bias), min, max);
    gemm(pixels, tmp, c, pw_weights, out, cout, &pw_epi);
}

/// Computes output rows `first ..` of one image into the slice given: `f(image, rows, first)`.
type RowsFn<'a> = dyn Fn(&[f32], &mut [f32], usize) + Sync + 'a;

/// Splits the output rows of all images (`batch · out_h` of them) into one contiguous range per
/// thread and calls `f(image, rows, first row)` for each image's share of a range.
#[allow(clippy::too_many_arguments)]
fn by_rows(
    pool: &mut SpinPool,
    src: &[f32],
    dst: &mut [f32],
    in_len: usize,
    out_h: usize,
    row_len: usize,
    f: &RowsFn,
) {
    let rows = dst.len() / row_len;
    let ranges = split(rows, pool.threads(), 1);
    let parts = Parts::new(
        dst,
        ranges
            .iter()
            .map(|r| r.start * row_len..r.end * row_len)
            .collect(),
    );
    pool.run(&|t| {
        // Safety: part t takes range t only.
        let (start, mut out) = unsafe { parts.get(t) };
        let mut row = start / row_len;
        while !out.is_empty() {
            let (image, row0) = (row / out_h, row % out_h);
            let n = (out_h - row0).min(out.len() / row_len);
            let (mine, rest) = std::mem::take(&mut out).split_at_mut(n * row_len);
            f(&src[image * in_len..(image + 1) * in_len], mine, row0);
            out = rest;
            row += n;
        }
    });
}

/// `C[m, n] = epilogue(A · B)` with the rows split between the pool's threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rows(
    pool: &mut SpinPool,
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) {
    let ranges = split(m, pool.threads(), 1);
    let parts = Parts::new(
        &mut c[..m * ldc],
        ranges.iter().map(|r| r.start * ldc..r.end * ldc).collect(),
    );
    pool.run(&|t| {
        // Safety: part t takes range t only.
        let (start, chunk) = unsafe { parts.get(t) };
        let row = start / ldc;
        gemm(chunk.len() / ldc, &a[row * lda..], lda, b, chunk, ldc, epi);
    });
}

/// GEMM split into one block of columns per thread, written in place.
#[allow(clippy::too_many_arguments)]
fn gemm_by_columns(
    pool: &mut SpinPool,
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) {
    if pool.threads() == 1 {
        gemm(m, a, lda, b, c, ldc, epi);
        return;
    }
    let blocks: Vec<std::sync::Mutex<Option<ColumnBlock<'_>>>> =
        column_blocks(c, m, b.n(), ldc, b.isa(), pool.threads())
            .into_iter()
            .map(|block| std::sync::Mutex::new(Some(block)))
            .collect();
    pool.run(&|t| {
        let block = blocks.get(t).and_then(|b| b.lock().ok()?.take());
        if let Some(block) = block {
            block.gemm(a, lda, b, epi);
        }
    });
}

/// Rows `row0 ..` of a pipeline's output for one image (`out`: whole rows of the last stage).
///
/// Works backwards from the output rows to the first row each stage needs, then pulls: a stage
/// computing a chunk of rows first makes the stage before it compute every input row the chunk
/// reads. Each row of each stage is computed once (threads working on neighbouring bands
/// recompute the few rows at their border).
#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    isa: Isa,
    stages: &[Stage],
    min: f32,
    max: f32,
    img: &[f32],
    out: &mut [f32],
    row0: usize,
    scratch: &mut AlignedVec,
) {
    let n = stages.len();
    let row_len = |s: &Stage| s.layer.output[1] * s.layer.output[2];
    let band_len = stages
        .iter()
        .map(|s| s.chunk * s.layer.output[1] * s.depthwise_channels())
        .max()
        .unwrap_or(0);
    let ring_total: usize = stages.iter().map(|s| s.ring * row_len(s)).sum();
    scratch.grow(ring_total + band_len);
    let (mut rest, band) = scratch.split_at_mut(ring_total);
    let mut rings: [&mut [f32]; MAX_STAGES] = Default::default();
    for (s, ring) in stages.iter().zip(&mut rings) {
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(s.ring * row_len(s));
        *ring = mine;
        rest = tail;
    }
    // First row each stage computes: the top of the window of the first row after it.
    let mut next = [0; MAX_STAGES];
    next[n - 1] = row0;
    for s in (1..n).rev() {
        let g = &stages[s].geometry;
        next[s - 1] = (next[s] * g.stride).saturating_sub(g.pad_top);
    }
    let mut p = Pipe {
        isa,
        stages,
        min,
        max,
        img,
        rings,
        band,
        next,
        out,
        row0,
    };
    let end = row0 + p.out.len() / row_len(&stages[n - 1]);
    p.produce(n - 1, end);
}

impl Stage {
    /// Channels of the depthwise output a separable stage keeps per row (0 for the stem).
    fn depthwise_channels(&self) -> usize {
        match &self.layer.op {
            Op::Separable { pointwise, .. } => match &**pointwise {
                Op::Pointwise { weights, .. } => weights.k(),
                _ => 0,
            },
            _ => 0,
        }
    }
}

/// The state of one [`run_pipeline`] call.
struct Pipe<'a, 'b> {
    isa: Isa,
    stages: &'a [Stage],
    min: f32,
    max: f32,
    img: &'a [f32],
    rings: [&'b mut [f32]; MAX_STAGES],
    band: &'b mut [f32],
    /// Next row each stage computes.
    next: [usize; MAX_STAGES],
    out: &'b mut [f32],
    row0: usize,
}

impl Pipe<'_, '_> {
    /// Computes stage `s`'s rows until `end` (exclusive), chunk by chunk.
    fn produce(&mut self, s: usize, end: usize) {
        let stage = &self.stages[s];
        let [out_h, out_w, cout] = stage.layer.output;
        let row_len = out_w * cout;
        let last = s + 1 == self.stages.len();
        while self.next[s] < end {
            let r0 = self.next[s];
            let mut r1 = (r0 + stage.chunk).min(out_h);
            if last {
                r1 = r1.min(end);
            } else {
                // Stop at the end of the ring: a chunk's rows are contiguous.
                r1 = r1.min(r0 - r0 % stage.ring + stage.ring);
            }
            let g = &stage.geometry;
            if s > 0 {
                // The last input row the chunk's bottom window reaches.
                let bottom = ((r1 - 1) * g.stride + KERNEL).saturating_sub(g.pad_top);
                self.produce(s - 1, bottom.min(g.in_h));
                let prev = &self.stages[s - 1];
                let top = (r0 * g.stride).saturating_sub(g.pad_top);
                debug_assert!(
                    top + prev.ring >= self.next[s - 1],
                    "stage {s}: input row {top} has left the ring"
                );
            }
            let (before, after) = self.rings.split_at_mut(s);
            let dst: &mut [f32] = if last {
                &mut self.out[(r0 - self.row0) * row_len..(r1 - self.row0) * row_len]
            } else {
                let slot = r0 % stage.ring;
                &mut after[0][slot * row_len..(slot + r1 - r0) * row_len]
            };
            let (src, ring) = match before.last() {
                Some(prev) => (&**prev, self.stages[s - 1].ring),
                None => (self.img, 0),
            };
            match &stage.layer.op {
                op @ Op::Conv { .. } => {
                    debug_assert!(s == 0, "a conv stage reads the whole image");
                    conv_rows(self.isa, op, self.min, self.max, src, dst, r0);
                }
                Op::Separable {
                    depthwise,
                    pointwise,
                    ..
                } => {
                    let pair = (&**depthwise, &**pointwise);
                    let (isa, lo, hi) = (self.isa, self.min, self.max);
                    separable_rows(isa, pair, lo, hi, src, ring, self.band, dst, r0);
                }
                _ => unreachable!("pipelines hold conv and separable stages"),
            }
            self.next[s] = r1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Stem;

    #[test]
    fn pipelines_are_planned_where_activations_outgrow_l2() {
        let kinds = |alpha, res| {
            let config = MobileNetConfig::new(alpha, res).unwrap();
            let plan = InferenceModel::new(&ModelFile::random(config, 1));
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
            let plain = InferenceModel::with_options(&file, Isa::detect(), Fusion::None);
            for fusion in [Fusion::Separable, Fusion::Pipeline] {
                let fused = InferenceModel::plan(&file, Isa::detect(), fusion, 0);
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
