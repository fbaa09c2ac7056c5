//! Inference: a model with batch norm folded and weights packed, and sessions that run it.
//!
//! [`InferenceModel::new`] folds every batch norm into its convolution's weights and a bias
//! (`scale = γ / √(σ² + ε)`, `w' = w · scale`, `b' = β − μ · scale`), packs the 1×1 and FC
//! weights for the GEMM microkernel of the detected instruction set, and keeps the layer list
//! as a flat plan. A [`Session`] owns the activation buffers for one batch size (two
//! ping-pong buffers sized for the largest layer, allocated once) and a thread pool.

use std::time::{Duration, Instant};

use mobilenet_kernels::conv::{conv2d, ConvShape};
use mobilenet_kernels::dwconv::dwconv3x3;
use mobilenet_kernels::gemm::{column_blocks, gemm, PackedB};
use mobilenet_kernels::pool::global_avg_pool;
use mobilenet_kernels::{ConvGeometry, Epilogue, Isa};
use rayon::prelude::*;

use crate::config::{Activation, MobileNetConfig, Padding};
use crate::layers::{Hwc, Layer, LayerKind, KERNEL};
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
        weights: Vec<f32>,
        bias: Vec<f32>,
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
}

/// One layer of the execution plan.
#[derive(Debug)]
pub struct PlannedLayer {
    /// Layer-table name.
    pub name: String,
    /// What it computes.
    pub kind: LayerKind,
    /// Input shape per image.
    pub input: Hwc,
    /// Output shape per image.
    pub output: Hwc,
    /// Mult-Adds per image.
    pub mult_adds: u64,
    /// Whether this step is a depthwise layer fused with the pointwise layer after it
    /// (`kind` is then `Pointwise`, `input` the depthwise layer's input).
    pub fused: bool,
    op: Op,
    min: f32,
    max: f32,
}

/// Which layers the plan fuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fusion {
    /// Every layer runs on its own and writes its whole output.
    None,
    /// Depthwise + pointwise pairs whose pointwise weights fit in L2 run band by band.
    Separable,
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
            && out.last().is_some_and(|dw| {
                dw.kind == LayerKind::Depthwise && !dw.fused && dw.output == layer.input
            });
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
            fused: true,
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
fn fold_bn(model: &ModelFile, layer: &Layer) -> (Vec<f32>, Vec<f32>) {
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

fn geometry(padding: Padding, input: Hwc, stride: usize) -> ConvGeometry {
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
        InferenceModel::with_options(model, isa, Fusion::Separable)
    }

    /// Plans `model` for `isa`, fusing layers as `fusion` says. Without fusion every layer's
    /// output is materialised, which is what observers of per-layer activations need.
    ///
    /// # Panics
    ///
    /// If `isa` is not supported by this CPU.
    pub fn with_options(model: &ModelFile, isa: Isa, fusion: Fusion) -> InferenceModel {
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
                            weights: scale_columns(weight(), &scale),
                            bias,
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
                    fused: false,
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

/// Runs an [`InferenceModel`] on batches of images, reusing its buffers between calls.
#[derive(Debug)]
pub struct Session<'m> {
    model: &'m InferenceModel,
    batch: usize,
    threads: usize,
    pool: Option<rayon::ThreadPool>,
    ping: Vec<f32>,
    pong: Vec<f32>,
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
        // With one thread everything runs on the caller's thread: no pool, no hand-offs.
        let pool = (threads > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .ok()
            })
            .flatten();
        let largest = model
            .layers
            .iter()
            .flat_map(|l| [l.input, l.output])
            .map(|s| s.iter().product::<usize>())
            .max()
            .unwrap_or(0);
        Session {
            model,
            batch,
            threads: if pool.is_some() { threads } else { 1 },
            pool,
            ping: vec![0.0; largest * batch],
            pong: vec![0.0; largest * batch],
            profile: None,
        }
    }

    /// Images per call.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Threads used.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Starts recording the time spent in each layer (summed over calls).
    pub fn enable_profiling(&mut self) {
        self.profile = Some(vec![Duration::ZERO; self.model.layers.len()]);
    }

    /// Time per layer since profiling was enabled, in plan order.
    pub fn profile(&self) -> Option<&[Duration]> {
        self.profile.as_deref()
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
    /// layer's output for the whole batch.
    pub fn run_observed(
        &mut self,
        input: &[f32],
        observe: &mut (dyn FnMut(&PlannedLayer, &[f32]) + Send),
    ) -> &[f32] {
        let batch = self.batch;
        assert_eq!(
            input.len(),
            batch * self.model.input_len(),
            "input must be batch × resolution² × 3 values"
        );
        let mut cur_len = input.len();
        self.ping[..cur_len].copy_from_slice(input);
        let model = self.model;
        let threads = self.threads;
        let (ping, pong, profile) = (&mut self.ping, &mut self.pong, &mut self.profile);
        // The whole pass runs inside the pool: one hand-off to the workers per call, not one
        // per layer (a cross-thread wake-up costs microseconds, and there are 29 layers).
        let mut forward = || {
            for (i, layer) in model.layers.iter().enumerate() {
                let start = Instant::now();
                let out_len = batch * layer.output.iter().product::<usize>();
                run_layer(model.isa, layer, batch, &ping[..cur_len], &mut pong[..out_len], threads);
                if let Some(p) = profile.as_mut() {
                    p[i] += start.elapsed();
                }
                std::mem::swap(ping, pong);
                cur_len = out_len;
                observe(layer, &ping[..cur_len]);
            }
        };
        match &self.pool {
            Some(pool) => pool.install(forward),
            None => forward(),
        }
        &self.ping[..cur_len]
    }
}

thread_local! {
    /// Depthwise output of one band of a fused separable step, per thread.
    static BAND: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bands per thread for row-split layers: a few, so work stealing can even out the load.
const BANDS_PER_THREAD: usize = 4;

#[allow(clippy::too_many_arguments)]
fn run_layer(
    isa: Isa,
    layer: &PlannedLayer,
    batch: usize,
    src: &[f32],
    dst: &mut [f32],
    threads: usize,
) {
    let in_len: usize = layer.input.iter().product();
    let out_len: usize = layer.output.iter().product();
    let [out_h, out_w, cout] = layer.output;
    let row_len = out_w * cout;
    let bands = if threads > 1 {
        threads * BANDS_PER_THREAD
    } else {
        1
    };
    let band_rows = out_h.div_ceil(bands).max(1);
    match &layer.op {
        Op::Conv {
            geometry,
            shape,
            weights,
            bias,
        } => {
            let epi = Epilogue::new(Some(bias), layer.min, layer.max);
            for_each_band(
                src,
                dst,
                in_len,
                out_len,
                band_rows * row_len,
                threads,
                |img, band, row0| {
                    conv2d(
                        isa,
                        geometry,
                        *shape,
                        img,
                        weights,
                        &epi,
                        band,
                        row0 * band_rows,
                    )
                },
            );
        }
        Op::Depthwise {
            geometry,
            weights,
            bias,
        } => {
            let epi = Epilogue::new(Some(bias), layer.min, layer.max);
            for_each_band(
                src,
                dst,
                in_len,
                out_len,
                band_rows * row_len,
                threads,
                |img, band, row0| {
                    dwconv3x3(
                        isa,
                        geometry,
                        cout,
                        img,
                        weights,
                        &epi,
                        band,
                        row0 * band_rows,
                    )
                },
            );
        }
        Op::Pointwise { weights, bias } => {
            let epi = Epilogue::new(Some(bias), layer.min, layer.max);
            let m = batch * out_h * out_w;
            let cin = layer.input[2];
            // Split where it reads least: by rows every task streams all of B, by columns
            // every task reads all of A. Late layers (7×7×1024: A 200 KB, B 4 MB) go by columns.
            if cout >= m {
                gemm_by_columns(m, src, cin, weights, dst, cout, &epi, threads);
            } else {
                gemm_rows(m, src, cin, weights, dst, cout, &epi, threads);
            }
        }
        Op::AvgPool => {
            let pixels = layer.input[0] * layer.input[1];
            let c = layer.input[2];
            for (img, out) in src.chunks_exact(in_len).zip(dst.chunks_exact_mut(c)) {
                global_avg_pool(img, pixels, c, out);
            }
        }
        Op::Separable {
            depthwise,
            pointwise,
            band_rows,
        } => {
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
            ) = (&**depthwise, &**pointwise)
            else {
                unreachable!("fuse_separable only pairs a depthwise with a pointwise op")
            };
            let c = layer.input[2];
            let dw_epi = Epilogue::new(Some(dw_bias), layer.min, layer.max);
            let pw_epi = Epilogue::new(Some(pw_bias), layer.min, layer.max);
            let band_len = band_rows * row_len;
            for_each_band(
                src,
                dst,
                in_len,
                out_len,
                band_len,
                threads,
                |img, band, b| {
                    let pixels = band.len() / cout;
                    BAND.with_borrow_mut(|tmp| {
                        if tmp.len() < pixels * c {
                            tmp.resize(pixels * c, 0.0);
                        }
                        let tmp = &mut tmp[..pixels * c];
                        dwconv3x3(
                            isa,
                            geometry,
                            c,
                            img,
                            dw_weights,
                            &dw_epi,
                            tmp,
                            b * band_rows,
                        );
                        gemm(pixels, tmp, c, pw_weights, band, cout, &pw_epi);
                    });
                },
            );
        }
        Op::Fc { weights, bias } => {
            let epi = Epilogue::new(Some(bias), layer.min, layer.max);
            let cin = layer.input[2];
            // At batch 1 there is one row: split the classes between threads (the layer is a
            // stream of its 4 MB of weights).
            gemm_by_columns(batch, src, cin, weights, dst, cout, &epi, threads);
        }
    }
}

/// Calls `f(image, output band, band index)` for every band of output rows of every image,
/// in parallel when `threads > 1`.
fn for_each_band<F>(
    src: &[f32],
    dst: &mut [f32],
    in_len: usize,
    out_len: usize,
    band_len: usize,
    threads: usize,
    f: F,
) where
    F: Fn(&[f32], &mut [f32], usize) + Sync,
{
    if threads > 1 {
        dst.par_chunks_mut(out_len)
            .zip(src.par_chunks(in_len))
            .for_each(|(out, img)| {
                out.par_chunks_mut(band_len)
                    .enumerate()
                    .for_each(|(b, band)| f(img, band, b));
            });
    } else {
        for (out, img) in dst.chunks_mut(out_len).zip(src.chunks(in_len)) {
            for (b, band) in out.chunks_mut(band_len).enumerate() {
                f(img, band, b);
            }
        }
    }
}

/// GEMM over `m` rows, split into one contiguous band of rows per task.
#[allow(clippy::too_many_arguments)]
fn gemm_rows(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
    threads: usize,
) {
    if threads <= 1 {
        gemm(m, a, lda, b, c, ldc, epi);
        return;
    }
    // At least 12 rows (one AVX-512 tile) per task.
    let rows = m.div_ceil(threads * BANDS_PER_THREAD).max(12);
    c[..m * ldc]
        .par_chunks_mut(rows * ldc)
        .zip(a[..m * lda].par_chunks(rows * lda))
        .for_each(|(c, a)| gemm(c.len() / ldc, a, lda, b, c, ldc, epi));
}

/// GEMM split into one block of columns per thread, written in place.
#[allow(clippy::too_many_arguments)]
fn gemm_by_columns(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
    threads: usize,
) {
    if threads <= 1 {
        gemm(m, a, lda, b, c, ldc, epi);
        return;
    }
    column_blocks(c, m, b.n(), ldc, b.isa(), threads)
        .into_par_iter()
        .for_each(|block| block.gemm(a, lda, b, epi));
}
