//! The trainable network: parameters, a training step (forward with batch statistics, backward
//! to gradients), and conversion to and from model files.
//!
//! Layout: NHWC activations, conv weights `[k, k, cin, cout]`, depthwise `[3, 3, c]`, pointwise
//! `[cin, cout]`, FC `[cin, classes]` — the model file's layouts, so parameters move between
//! the two by name. Evaluation goes through [`crate::InferenceModel`] (batch norm folded, with
//! the moving statistics).

use std::collections::BTreeMap;

use mobilenet_kernels::backward::{
    conv2d_backward_weights, dwconv3x3_backward_input, dwconv3x3_backward_weights,
};
use mobilenet_kernels::conv::{conv2d, ConvShape};
use mobilenet_kernels::dwconv::dwconv3x3;
use mobilenet_kernels::gemm::{gemm, PackedB};
use mobilenet_kernels::{ConvGeometry, Epilogue, Isa};

use super::ops::{self, BnCache};
use super::Rng;
use crate::config::{MobileNetConfig, Variant};
use crate::engine::{gemm_rows, geometry};
use crate::layers::{Layer, LayerKind};
use crate::pool::{split, Parts, SpinPool};
use crate::weights::{ModelFile, Tensor};

/// Why a network cannot be trained.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TrainError {
    /// Only the standard and shallow networks have backward passes.
    #[error("training the {0} variant is not implemented (its full 3×3 convolutions have no input gradient kernel)")]
    Variant(Variant),
    /// A model without a classifier cannot compute a classification loss.
    #[error("the model has no classifier head to train")]
    NoHead,
}

/// Settings of a training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOptions {
    /// Label smoothing of the cross-entropy target (0: off, as in the paper).
    pub label_smoothing: f32,
    /// Moving-average decay of the batch-norm statistics (TF-slim: 0.9997; 0.99 trains short
    /// runs better).
    pub bn_decay: f32,
    /// Whether the moving statistics are updated (false for gradient checks).
    pub update_bn_stats: bool,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            label_smoothing: 0.0,
            bn_decay: 0.99,
            update_bn_stats: true,
        }
    }
}

/// Loss and accuracy of one training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch.
    pub loss: f32,
    /// Images whose arg-max logit is their label.
    pub correct: usize,
}

/// One trainable parameter tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Model-file name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub value: Vec<f32>,
    /// Whether L2 weight decay applies: conv, pointwise and FC weights; never depthwise filters
    /// (the paper: "very little or no weight decay on the depthwise filters"), batch-norm
    /// parameters or biases.
    pub decay: bool,
}

/// A trainable MobileNet.
#[derive(Debug)]
pub struct TrainNet {
    config: MobileNetConfig,
    layers: Vec<Layer>,
    geometries: Vec<Option<ConvGeometry>>,
    /// Trainable tensors, in layer order.
    pub params: Vec<Param>,
    /// Batch-norm moving statistics by model-file name.
    pub buffers: BTreeMap<String, Vec<f32>>,
    bn_eps: f32,
    template: ModelFile,
    isa: Isa,
    pool: SpinPool,
    state: StepState,
}

/// Activations and caches of the last forward pass, reused between steps.
#[derive(Debug, Default)]
struct StepState {
    batch: usize,
    /// `acts[l]` is the input of conv layer `l`; the last one feeds the pool.
    acts: Vec<Vec<f32>>,
    /// Conv outputs before batch norm.
    zs: Vec<Vec<f32>>,
    bn: Vec<BnCache>,
    pooled: Vec<f32>,
    dropout_mask: Vec<f32>,
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    grad_a: Vec<f32>,
    grad_b: Vec<f32>,
    scratch: Vec<f32>,
}

/// Indices of a layer's parameters in `TrainNet::params`.
#[derive(Clone, Copy, Debug)]
struct LayerParams {
    weight: usize,
    gamma: usize,
    beta: usize,
}

impl TrainNet {
    /// A trainable network starting from `model`'s weights, running on `threads` threads
    /// (0: all cores).
    pub fn from_model(model: &ModelFile, threads: usize) -> Result<TrainNet, TrainError> {
        let config = model.config;
        if config.variant() == Variant::FullConv {
            return Err(TrainError::Variant(config.variant()));
        }
        if config.head().is_none() {
            return Err(TrainError::NoHead);
        }
        let layers = config.layers();
        let mut params = Vec::new();
        let mut buffers = BTreeMap::new();
        for layer in &layers {
            let mut push = |name: String, decay: bool| {
                let t = &model.tensors[&name];
                params.push(Param {
                    name,
                    shape: t.shape.clone(),
                    value: t.data.clone(),
                    decay,
                });
            };
            match layer.kind {
                LayerKind::AvgPool => {}
                LayerKind::Fc => {
                    push("fc/weight".into(), true);
                    push("fc/bias".into(), false);
                }
                kind => {
                    push(
                        format!("{}/weight", layer.name),
                        kind != LayerKind::Depthwise,
                    );
                    push(format!("{}/bn/gamma", layer.name), false);
                    push(format!("{}/bn/beta", layer.name), false);
                    for stat in ["moving_mean", "moving_variance"] {
                        let name = format!("{}/bn/{stat}", layer.name);
                        buffers.insert(name.clone(), model.tensors[&name].data.clone());
                    }
                }
            }
        }
        let geometries = layers
            .iter()
            .map(|l| match l.kind {
                LayerKind::Conv | LayerKind::Depthwise => {
                    Some(geometry(config.padding(), l.input, l.stride))
                }
                _ => None,
            })
            .collect();
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        Ok(TrainNet {
            config,
            layers,
            geometries,
            params,
            buffers,
            bn_eps: model.bn_epsilon,
            template: ModelFile {
                tensors: BTreeMap::new(),
                ..model.clone()
            },
            isa: Isa::detect(),
            pool: SpinPool::new(threads),
            state: StepState::default(),
        })
    }

    /// The network's configuration.
    pub fn config(&self) -> &MobileNetConfig {
        &self.config
    }

    /// Uses another instruction set (tests compare them).
    pub fn set_isa(&mut self, isa: Isa) {
        assert!(isa.is_supported(), "{isa} is not supported on this CPU");
        self.isa = isa;
    }

    /// The current weights and statistics as a model file (labels and preprocessing kept).
    pub fn to_model(&self) -> ModelFile {
        let mut model = self.template.clone();
        for p in &self.params {
            model.tensors.insert(
                p.name.clone(),
                Tensor::new(p.shape.clone(), p.value.clone()),
            );
        }
        for (name, v) in &self.buffers {
            let shape = vec![v.len()];
            model
                .tensors
                .insert(name.clone(), Tensor::new(shape, v.clone()));
        }
        model
    }

    /// Zeroed gradients, one per parameter.
    pub fn zero_gradients(&self) -> Vec<Vec<f32>> {
        self.params
            .iter()
            .map(|p| vec![0.0; p.value.len()])
            .collect()
    }

    fn layer_params(&self) -> Vec<Option<LayerParams>> {
        let mut index = 0;
        self.layers
            .iter()
            .map(|l| match l.kind {
                LayerKind::AvgPool => None,
                LayerKind::Fc => {
                    index += 2;
                    None
                }
                _ => {
                    let p = LayerParams {
                        weight: index,
                        gamma: index + 1,
                        beta: index + 2,
                    };
                    index += 3;
                    Some(p)
                }
            })
            .collect()
    }

    /// One training step on a batch: forward with batch statistics, loss, backward. Writes the
    /// gradient of the mean loss into `grads` (one per parameter, overwritten) and, if asked,
    /// updates the moving statistics.
    ///
    /// `images` is `batch × resolution² × 3` preprocessed values (NHWC), `labels` one class per
    /// image.
    ///
    /// # Panics
    ///
    /// If the sizes do not match or a label is not a class.
    pub fn step(
        &mut self,
        images: &[f32],
        labels: &[usize],
        rng: &mut Rng,
        options: &StepOptions,
        grads: &mut [Vec<f32>],
    ) -> StepStats {
        let batch = labels.len();
        let res = self.config.resolution();
        assert_eq!(
            images.len(),
            batch * res * res * 3,
            "images must be batch × res² × 3"
        );
        let classes = self.config.classes().unwrap_or(0);
        assert!(labels.iter().all(|&l| l < classes), "label out of range");
        assert_eq!(grads.len(), self.params.len(), "one gradient per parameter");
        let lp = self.layer_params();
        let convs: Vec<usize> = (0..self.layers.len())
            .filter(|&i| lp[i].is_some())
            .collect();
        let mut st = std::mem::take(&mut self.state);
        st.batch = batch;
        st.acts.resize_with(convs.len() + 1, Vec::new);
        st.zs.resize_with(convs.len(), Vec::new);
        st.bn.resize_with(convs.len(), BnCache::default);
        st.acts[0].clear();
        st.acts[0].extend_from_slice(images);

        // Forward.
        for (j, &li) in convs.iter().enumerate() {
            let p = lp[li].unwrap_or_else(|| unreachable!("convs are layers with parameters"));
            let out_len = batch * self.layers[li].output.iter().product::<usize>();
            let mut z = std::mem::take(&mut st.zs[j]);
            z.resize(out_len, 0.0);
            self.conv_forward(li, &st.acts[j], &mut z, batch);
            let layer = &self.layers[li];
            let c = layer.output[2];
            let mut a = std::mem::take(&mut st.acts[j + 1]);
            a.resize(out_len, 0.0);
            let (gamma, beta) = (&self.params[p.gamma].value, &self.params[p.beta].value);
            let act = self.config.activation();
            let (cache, var) =
                bn_act_forward(&mut self.pool, &z, c, gamma, beta, self.bn_eps, act, &mut a);
            if options.update_bn_stats {
                let d = options.bn_decay;
                let mean_name = format!("{}/bn/moving_mean", layer.name);
                let var_name = format!("{}/bn/moving_variance", layer.name);
                for (m, &b) in self
                    .buffers
                    .get_mut(&mean_name)
                    .into_iter()
                    .flatten()
                    .zip(&cache.mean)
                {
                    *m = d * *m + (1.0 - d) * b;
                }
                for (m, &b) in self
                    .buffers
                    .get_mut(&var_name)
                    .into_iter()
                    .flatten()
                    .zip(&var)
                {
                    *m = d * *m + (1.0 - d) * b;
                }
            }
            st.bn[j] = cache;
            st.zs[j] = z;
            st.acts[j + 1] = a;
        }
        let last = &self.layers[*convs.last().unwrap_or_else(|| unreachable!("conv layers"))];
        let [fh, fw, fc] = last.output;
        let pixels = fh * fw;
        st.pooled.resize(batch * fc, 0.0);
        ops::avgpool_forward(&st.acts[convs.len()], batch, pixels, fc, &mut st.pooled);
        let dropout = self.config.head().map_or(0.0, |h| h.dropout) as f32;
        ops::dropout_forward(&mut st.pooled, dropout, rng, &mut st.dropout_mask);
        let nfc = self.params.len() - 2;
        let (fc_w, fc_b) = (&self.params[nfc].value, &self.params[nfc + 1].value);
        st.logits.resize(batch * classes, 0.0);
        let packed = PackedB::new(self.isa, fc_w, fc, classes);
        gemm(
            batch,
            &st.pooled,
            fc,
            &packed,
            &mut st.logits,
            classes,
            &Epilogue::new(Some(fc_b), f32::NEG_INFINITY, f32::INFINITY),
        );
        st.dlogits.resize(batch * classes, 0.0);
        let (loss, correct) = ops::softmax_cross_entropy(
            &st.logits,
            labels,
            classes,
            options.label_smoothing,
            &mut st.dlogits,
        );

        // Backward: classifier.
        // dW_fc = pooledᵀ · dlogits, db = Σ dlogits, dpooled = dlogits · W_fcᵀ.
        {
            let (dw, db) = grads[nfc..].split_at_mut(1);
            let (dw, db) = (&mut dw[0], &mut db[0]);
            dw.fill(0.0);
            for (prow, drow) in st
                .pooled
                .chunks_exact(fc)
                .zip(st.dlogits.chunks_exact(classes))
            {
                for (i, &pv) in prow.iter().enumerate() {
                    if pv != 0.0 {
                        for (g, &d) in dw[i * classes..(i + 1) * classes].iter_mut().zip(drow) {
                            *g += pv * d;
                        }
                    }
                }
            }
            db.fill(0.0);
            for drow in st.dlogits.chunks_exact(classes) {
                for (g, &d) in db.iter_mut().zip(drow) {
                    *g += d;
                }
            }
        }
        let mut dpooled = vec![0.0; batch * fc];
        let wt = PackedB::from_transposed(self.isa, fc_w, classes, fc);
        gemm(
            batch,
            &st.dlogits,
            classes,
            &wt,
            &mut dpooled,
            fc,
            &Epilogue::linear(),
        );
        ops::dropout_backward(&st.dropout_mask, &mut dpooled);
        let mut da = std::mem::take(&mut st.grad_a);
        da.resize(batch * pixels * fc, 0.0);
        ops::avgpool_backward(&dpooled, batch, pixels, fc, &mut da);

        // Backward: conv layers, last to first.
        let mut dz = std::mem::take(&mut st.grad_b);
        for (j, &li) in convs.iter().enumerate().rev() {
            let p = lp[li].unwrap_or_else(|| unreachable!("convs are layers with parameters"));
            let c = self.layers[li].output[2];
            let out_len = batch * self.layers[li].output.iter().product::<usize>();
            dz.resize(out_len, 0.0);
            {
                let gamma = &self.params[p.gamma].value;
                let (lo, hi) = grads.split_at_mut(p.beta);
                let (dgamma, dbeta) = (&mut lo[p.gamma], &mut hi[0]);
                let act = self.config.activation();
                let (z, a) = (&st.zs[j], &st.acts[j + 1]);
                let d = &mut da[..out_len];
                bn_act_backward(
                    &mut self.pool,
                    z,
                    a,
                    c,
                    &st.bn[j],
                    gamma,
                    act,
                    d,
                    &mut dz,
                    dgamma,
                    dbeta,
                );
            }
            let in_len = batch * self.layers[li].input.iter().product::<usize>();
            let need_dx = j > 0;
            if need_dx {
                da.resize(in_len, 0.0);
            }
            let dw = &mut grads[p.weight];
            let dx = if need_dx {
                Some(&mut da[..in_len])
            } else {
                None
            };
            self.conv_backward(li, &st.acts[j], &dz, dw, dx, batch, &mut st.scratch);
        }
        st.grad_a = da;
        st.grad_b = dz;
        self.state = st;
        StepStats { loss, correct }
    }

    /// Convolution (no bias: batch norm follows) of layer `li` over the batch.
    fn conv_forward(&mut self, li: usize, x: &[f32], z: &mut [f32], batch: usize) {
        let layer = &self.layers[li];
        let w = &self.params[self.layer_params()[li].map_or(0, |p| p.weight)].value;
        let isa = self.isa;
        let in_len: usize = layer.input.iter().product();
        let out_len: usize = layer.output.iter().product();
        let linear = Epilogue::linear();
        match layer.kind {
            LayerKind::Conv | LayerKind::Depthwise => {
                let g = self.geometries[li].unwrap_or_else(|| unreachable!("conv geometry"));
                let shape = ConvShape {
                    k: layer.kernel,
                    cin: layer.input[2],
                    cout: layer.output[2],
                };
                let kind = layer.kind;
                per_image(&mut self.pool, z, out_len, batch, &|i, out| {
                    let img = &x[i * in_len..(i + 1) * in_len];
                    if kind == LayerKind::Conv {
                        conv2d(isa, &g, shape, img, w, &linear, out, 0);
                    } else {
                        dwconv3x3(isa, &g, shape.cin, img, w, &linear, out, 0);
                    }
                });
            }
            LayerKind::Pointwise => {
                let (cin, cout) = (layer.input[2], layer.output[2]);
                let m = batch * layer.output[0] * layer.output[1];
                let packed = PackedB::new(isa, w, cin, cout);
                gemm_rows(&mut self.pool, m, x, cin, &packed, z, cout, &linear);
            }
            LayerKind::AvgPool | LayerKind::Fc => unreachable!("not a conv layer"),
        }
    }

    /// Gradients of layer `li`'s convolution: `dw` (overwritten) and, if asked, `dx`.
    #[allow(clippy::too_many_arguments)]
    fn conv_backward(
        &mut self,
        li: usize,
        x: &[f32],
        dz: &[f32],
        dw: &mut [f32],
        dx: Option<&mut [f32]>,
        batch: usize,
        scratch: &mut Vec<f32>,
    ) {
        let layer = &self.layers[li];
        let w = &self.params[self.layer_params()[li].map_or(0, |p| p.weight)].value;
        let isa = self.isa;
        let in_len: usize = layer.input.iter().product();
        let out_len: usize = layer.output.iter().product();
        let threads = self.pool.threads();
        match layer.kind {
            LayerKind::Conv | LayerKind::Depthwise => {
                let g = self.geometries[li].unwrap_or_else(|| unreachable!("conv geometry"));
                let shape = ConvShape {
                    k: layer.kernel,
                    cin: layer.input[2],
                    cout: layer.output[2],
                };
                let kind = layer.kind;
                // Weight gradient: one partial sum per thread, then added up.
                let wlen = dw.len();
                scratch.clear();
                scratch.resize(threads * wlen, 0.0);
                let ranges = split(batch, threads, 1);
                let parts = Parts::new(
                    scratch,
                    (0..threads).map(|t| t * wlen..(t + 1) * wlen).collect(),
                );
                self.pool.run(&|t| {
                    // Safety: part t takes range t only.
                    let (_, acc) = unsafe { parts.get(t) };
                    for i in ranges[t].clone() {
                        let img = &x[i * in_len..(i + 1) * in_len];
                        let d = &dz[i * out_len..(i + 1) * out_len];
                        if kind == LayerKind::Conv {
                            conv2d_backward_weights(isa, &g, shape, img, d, acc);
                        } else {
                            dwconv3x3_backward_weights(isa, &g, shape.cin, img, d, acc);
                        }
                    }
                });
                sum_partials(scratch, dw);
                if let Some(dx) = dx {
                    assert!(
                        kind == LayerKind::Depthwise,
                        "the input gradient of a full conv is not implemented"
                    );
                    per_image(&mut self.pool, dx, in_len, batch, &|i, out| {
                        let d = &dz[i * out_len..(i + 1) * out_len];
                        dwconv3x3_backward_input(isa, &g, shape.cin, d, w, out);
                    });
                }
            }
            LayerKind::Pointwise => {
                let (cin, cout) = (layer.input[2], layer.output[2]);
                let m = batch * layer.output[0] * layer.output[1];
                // dW = Xᵀ · dZ, in blocks of rows: Xᵀ of the block as A, the block of dZ as B.
                pointwise_weight_gradient(&mut self.pool, isa, m, cin, cout, x, dz, dw, scratch);
                if let Some(dx) = dx {
                    // dX = dZ · Wᵀ.
                    let wt = PackedB::from_transposed(isa, w, cout, cin);
                    gemm_rows(
                        &mut self.pool,
                        m,
                        dz,
                        cout,
                        &wt,
                        dx,
                        cin,
                        &Epilogue::linear(),
                    );
                }
            }
            LayerKind::AvgPool | LayerKind::Fc => unreachable!("not a conv layer"),
        }
    }
}

/// Batch norm with batch statistics followed by the activation, rows split between threads:
/// per-thread channel sums, combined, then `a = act(z·scale + shift)` in parallel. Returns the
/// cache and the unbiased batch variance. The single-threaded reference is
/// [`ops::bn_forward_train`] followed by [`ops::activation_forward`].
#[allow(clippy::too_many_arguments)]
fn bn_act_forward(
    pool: &mut SpinPool,
    z: &[f32],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    act: crate::config::Activation,
    a: &mut [f32],
) -> (BnCache, Vec<f32>) {
    let rows = z.len() / c;
    let ranges = split(rows, pool.threads(), 1);
    let (sum, sq) = combine(&per_part(pool, &ranges, |_, r| {
        ops::channel_moments(&z[r.start * c..r.end * c], c)
    }));
    let (cache, unbiased) = ops::bn_statistics(&sum, &sq, rows, eps);
    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * cache.inv_std[ch]).collect();
    let shift: Vec<f32> = (0..c)
        .map(|ch| beta[ch] - cache.mean[ch] * scale[ch])
        .collect();
    let hi = ops::activation_max(act);
    let isa = mobilenet_kernels::Isa::detect();
    let parts = Parts::new(a, ranges.iter().map(|r| r.start * c..r.end * c).collect());
    pool.run(&|t| {
        // Safety: part t takes range t only.
        let (start, out) = unsafe { parts.get(t) };
        let x = &z[start..start + out.len()];
        mobilenet_kernels::bn::affine_clamp(isa, x, c, &scale, &shift, 0.0, hi, out);
    });
    (cache, unbiased)
}

/// Backward of [`bn_act_forward`]: `da` (dL/da in, dL/dy out) → `dz`, `dgamma`, `dbeta`, rows
/// split between threads. The reference is [`ops::activation_backward`] then
/// [`ops::bn_backward`].
#[allow(clippy::too_many_arguments)]
fn bn_act_backward(
    pool: &mut SpinPool,
    z: &[f32],
    a: &[f32],
    c: usize,
    cache: &BnCache,
    gamma: &[f32],
    act: crate::config::Activation,
    da: &mut [f32],
    dz: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let rows = z.len() / c;
    let ranges = split(rows, pool.threads(), 1);
    let sums = {
        let parts = Parts::new(da, ranges.iter().map(|r| r.start * c..r.end * c).collect());
        per_part(pool, &ranges, |t, _| {
            // Safety: part t takes range t only.
            let (start, d) = unsafe { parts.get(t) };
            let len = d.len();
            ops::bn_act_backward_sums(
                &z[start..start + len],
                &a[start..start + len],
                d,
                c,
                cache,
                act,
            )
        })
    };
    let (sum_dy, sum_dyx) = combine(&sums);
    let n = rows as f64;
    for ch in 0..c {
        dbeta[ch] = sum_dy[ch] as f32;
        dgamma[ch] = sum_dyx[ch] as f32;
    }
    let k: Vec<f32> = (0..c).map(|ch| gamma[ch] * cache.inv_std[ch]).collect();
    let mean_dy: Vec<f32> = (0..c).map(|ch| (sum_dy[ch] / n) as f32).collect();
    let mean_dyx: Vec<f32> = (0..c).map(|ch| (sum_dyx[ch] / n) as f32).collect();
    let dy: &[f32] = da;
    let isa = mobilenet_kernels::Isa::detect();
    let parts = Parts::new(dz, ranges.iter().map(|r| r.start * c..r.end * c).collect());
    pool.run(&|t| {
        // Safety: part t takes range t only.
        let (start, out) = unsafe { parts.get(t) };
        let len = out.len();
        let (zs, ds) = (&z[start..start + len], &dy[start..start + len]);
        mobilenet_kernels::bn::backward_apply(
            isa,
            zs,
            ds,
            c,
            &cache.mean,
            &cache.inv_std,
            &k,
            &mean_dy,
            &mean_dyx,
            out,
        );
    });
}

/// Runs `f(part, range)` for each part's range of rows on that part's thread and collects the
/// results in part order.
fn per_part<T: Send + Default>(
    pool: &mut SpinPool,
    ranges: &[std::ops::Range<usize>],
    f: impl Fn(usize, &std::ops::Range<usize>) -> T + Sync,
) -> Vec<T> {
    let slots: Vec<std::sync::Mutex<T>> = ranges.iter().map(|_| Default::default()).collect();
    pool.run(&|t| {
        if let Some(r) = ranges.get(t) {
            let value = f(t, r);
            if let Ok(mut slot) = slots[t].lock() {
                *slot = value;
            }
        }
    });
    slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect()
}

/// Adds up per-part `(Σa, Σb)` channel sums.
fn combine(parts: &[(Vec<f64>, Vec<f64>)]) -> (Vec<f64>, Vec<f64>) {
    let c = parts.iter().map(|p| p.0.len()).max().unwrap_or(0);
    let (mut a, mut b) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (pa, pb) in parts {
        for ch in 0..pa.len() {
            a[ch] += pa[ch];
            b[ch] += pb[ch];
        }
    }
    (a, b)
}

/// Rows of the pointwise weight gradient per block: Xᵀ and dZ of a block stay small.
const WGRAD_BLOCK_ROWS: usize = 2048;

/// `dw[cin, cout] = Xᵀ · dZ` over `m` rows, each thread summing its blocks of rows into its
/// own buffer.
#[allow(clippy::too_many_arguments)]
fn pointwise_weight_gradient(
    pool: &mut SpinPool,
    isa: Isa,
    m: usize,
    cin: usize,
    cout: usize,
    x: &[f32],
    dz: &[f32],
    dw: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let threads = pool.threads();
    let wlen = cin * cout;
    scratch.clear();
    scratch.resize(threads * wlen, 0.0);
    let ranges = split(m, threads, 1);
    let parts = Parts::new(
        scratch,
        (0..threads).map(|t| t * wlen..(t + 1) * wlen).collect(),
    );
    pool.run(&|t| {
        // Safety: part t takes range t only.
        let (_, acc) = unsafe { parts.get(t) };
        let mut xt = Vec::new();
        let mut r = ranges[t].start;
        while r < ranges[t].end {
            let rows = (ranges[t].end - r).min(WGRAD_BLOCK_ROWS);
            xt.clear();
            xt.resize(cin * rows, 0.0);
            for (i, row) in x[r * cin..(r + rows) * cin].chunks_exact(cin).enumerate() {
                for (ci, &v) in row.iter().enumerate() {
                    xt[ci * rows + i] = v;
                }
            }
            let b = PackedB::new(isa, &dz[r * cout..(r + rows) * cout], rows, cout);
            gemm(cin, &xt, rows, &b, acc, cout, &Epilogue::accumulating());
            r += rows;
        }
    });
    sum_partials(scratch, dw);
}

/// `total = Σ` of the per-thread partial sums laid end to end in `partials`.
fn sum_partials(partials: &[f32], total: &mut [f32]) {
    total.fill(0.0);
    for part in partials.chunks_exact(total.len()) {
        for (a, &b) in total.iter_mut().zip(part) {
            *a += b;
        }
    }
}

/// Calls `f(image, output)` for every image of `out` (`batch` slices of `len`), the images split
/// between the pool's threads.
fn per_image(
    pool: &mut SpinPool,
    out: &mut [f32],
    len: usize,
    batch: usize,
    f: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let ranges = split(batch, pool.threads(), 1);
    let parts = Parts::new(
        &mut out[..batch * len],
        ranges.iter().map(|r| r.start * len..r.end * len).collect(),
    );
    pool.run(&|t| {
        // Safety: part t takes range t only.
        let (start, chunk) = unsafe { parts.get(t) };
        for (j, img) in chunk.chunks_exact_mut(len).enumerate() {
            f(start / len + j, img);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Padding;

    /// α 0.25 at 64×64: the last maps are 2×2, so with a batch of 4 every batch norm sees at
    /// least 16 values per channel (with fewer it is too ill-conditioned for finite differences).
    fn tiny(stem: crate::Stem, padding: Padding) -> ModelFile {
        let config = MobileNetConfig::new(0.25, 64)
            .and_then(|c| c.with_classes(4))
            .and_then(|c| c.with_dropout(0.0))
            .expect("valid config")
            .with_stem(stem)
            .with_padding(padding);
        let mut model = ModelFile::random(config, 5);
        // Non-trivial batch-norm parameters, so that their gradients are exercised.
        let mut rng = Rng::new(9);
        for (name, t) in model.tensors.iter_mut() {
            if name.ends_with("gamma") {
                t.data
                    .iter_mut()
                    .for_each(|v| *v = 1.0 + 0.2 * rng.normal());
            } else if name.ends_with("beta") {
                t.data
                    .iter_mut()
                    .for_each(|v| *v = 0.2 + 0.2 * rng.normal());
            }
        }
        model
    }

    fn batch(res: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = Rng::new(seed);
        let images = (0..n * res * res * 3).map(|_| rng.normal()).collect();
        let labels = (0..n).map(|i| i % 4).collect();
        (images, labels)
    }

    /// Finite differences of the step's loss against the analytic gradient.
    ///
    /// ReLU6 makes the loss piecewise smooth: a perturbation of an early weight moves thousands
    /// of units, some across a kink, so single coordinates of early layers are unreliable. The
    /// check is therefore (a) coordinate-wise on the classifier and the last block, which only
    /// kink-free ops follow, and (b) along the gradient's own direction for all parameters at
    /// once, where the crossings average out: `(L(θ + εĝ) − L(θ − εĝ)) / 2ε ≈ |g|`.
    fn gradient_check(stem: crate::Stem, padding: Padding, threads: usize) {
        let model = tiny(stem, padding);
        let mut net = TrainNet::from_model(&model, threads).expect("trainable");
        let res = model.config.resolution();
        let (images, labels) = batch(res, 4, 1);
        let options = StepOptions {
            update_bn_stats: false,
            ..StepOptions::default()
        };
        let mut grads = net.zero_gradients();
        net.step(&images, &labels, &mut Rng::new(0), &options, &mut grads);
        let loss_of = |net: &mut TrainNet| {
            let mut scratch = net.zero_gradients();
            net.step(&images, &labels, &mut Rng::new(0), &options, &mut scratch)
                .loss as f64
        };

        let tail = [
            "fc/weight",
            "fc/bias",
            "conv_13/pointwise/bn/gamma",
            "conv_13/pointwise/bn/beta",
        ];
        let checked: Vec<usize> = (0..net.params.len())
            .filter(|&pi| tail.contains(&net.params[pi].name.as_str()))
            .collect();
        assert_eq!(checked.len(), tail.len());
        for pi in checked {
            let len = net.params[pi].value.len();
            for i in (0..len).step_by((len / 8).max(1)) {
                let orig = net.params[pi].value[i];
                // The loss comes back as f32 (ulp 2.4e-7 near 2.3): steps below ~1e-3 would
                // make the difference quotient mostly rounding noise for small gradients.
                let eps = 5e-3 * orig.abs().max(0.2);
                net.params[pi].value[i] = orig + eps;
                let up = loss_of(&mut net);
                net.params[pi].value[i] = orig - eps;
                let down = loss_of(&mut net);
                net.params[pi].value[i] = orig;
                let numeric = (up - down) / (2.0 * eps as f64);
                let analytic = grads[pi][i] as f64;
                assert!(
                    (numeric - analytic).abs() <= 2e-2 * numeric.abs().max(analytic.abs()) + 2e-4,
                    "{}[{i}]: numeric {numeric}, analytic {analytic}",
                    net.params[pi].name
                );
            }
        }

        let norm: f64 = grads
            .iter()
            .flatten()
            .map(|&g| (g as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let base: Vec<Vec<f32>> = net.params.iter().map(|p| p.value.clone()).collect();
        let mut along = |t: f64| {
            for ((p, b), g) in net.params.iter_mut().zip(&base).zip(&grads) {
                for ((v, &b), &g) in p.value.iter_mut().zip(b).zip(g) {
                    *v = (b as f64 + t * g as f64 / norm) as f32;
                }
            }
            loss_of(&mut net)
        };
        let eps = 1e-3;
        let directional = (along(eps) - along(-eps)) / (2.0 * eps);
        assert!(
            (directional - norm).abs() <= 0.05 * norm,
            "directional derivative {directional} vs gradient norm {norm}"
        );
    }

    #[test]
    fn network_gradients_match_finite_differences() {
        gradient_check(crate::Stem::Standard, Padding::TfSame, 1);
    }

    #[test]
    fn network_gradients_small_stem_symmetric_padding_two_threads() {
        gradient_check(crate::Stem::SmallInput, Padding::Symmetric, 2);
    }

    #[test]
    fn every_isa_and_thread_count_gives_the_same_step() {
        let model = tiny(crate::Stem::Standard, Padding::TfSame);
        let (images, labels) = batch(64, 4, 2);
        let mut reference: Option<(f32, Vec<Vec<f32>>)> = None;
        for isa in Isa::available() {
            for threads in [1, 2] {
                let mut net = TrainNet::from_model(&model, threads).expect("trainable");
                net.set_isa(isa);
                let mut grads = net.zero_gradients();
                let stats = net.step(
                    &images,
                    &labels,
                    &mut Rng::new(3),
                    &StepOptions::default(),
                    &mut grads,
                );
                match &reference {
                    None => reference = Some((stats.loss, grads)),
                    Some((loss, want)) => {
                        assert!((stats.loss - loss).abs() < 1e-5, "{isa} t{threads}: loss");
                        // Rounding differs between instruction sets (fused or not) and thread
                        // counts (summation order); a unit that sits on a ReLU kink can then
                        // switch sides, so tensors are compared by relative L2 distance.
                        for ((g, w), p) in grads.iter().zip(want).zip(&net.params) {
                            let diff: f64 =
                                g.iter().zip(w).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                            let norm: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum();
                            assert!(
                                diff.sqrt() <= 1e-2 * norm.sqrt() + 1e-6,
                                "{isa} t{threads} {}: |Δ| {} of |g| {}",
                                p.name,
                                diff.sqrt(),
                                norm.sqrt()
                            );
                        }
                    }
                }
            }
        }
    }

    /// The threaded batch norm + activation equals the single-threaded reference ops.
    #[test]
    fn threaded_batch_norm_matches_the_reference() {
        let (rows, c) = (37, 6);
        let mut rng = Rng::new(4);
        let z: Vec<f32> = (0..rows * c).map(|_| 3.0 * rng.normal()).collect();
        let gamma: Vec<f32> = (0..c).map(|_| 1.0 + 0.3 * rng.normal()).collect();
        let beta: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
        let da0: Vec<f32> = (0..rows * c).map(|_| rng.normal()).collect();
        let act = crate::config::Activation::Relu6;
        let mut a_ref = vec![0.0; rows * c];
        let (cache_ref, var_ref) = ops::bn_forward_train(&z, c, &gamma, &beta, 1e-3, &mut a_ref);
        ops::activation_forward(&mut a_ref, act);
        let mut dy_ref = da0.clone();
        ops::activation_backward(&a_ref, act, &mut dy_ref);
        let (mut dz_ref, mut dg_ref, mut db_ref) =
            (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
        ops::bn_backward(
            &z,
            c,
            &cache_ref,
            &gamma,
            &dy_ref,
            &mut dz_ref,
            &mut dg_ref,
            &mut db_ref,
        );
        for threads in [1, 2, 3, 5] {
            let mut pool = SpinPool::new(threads);
            let mut a = vec![0.0; rows * c];
            let (cache, var) = bn_act_forward(&mut pool, &z, c, &gamma, &beta, 1e-3, act, &mut a);
            let close = |x: &[f32], y: &[f32], what: &str| {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-5 * q.abs().max(1.0),
                        "{threads} threads {what}[{i}]: {p} vs {q}"
                    );
                }
            };
            close(&a, &a_ref, "a");
            close(&cache.mean, &cache_ref.mean, "mean");
            close(&var, &var_ref, "var");
            let mut da = da0.clone();
            let (mut dz, mut dg, mut db) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
            bn_act_backward(
                &mut pool, &z, &a, c, &cache, &gamma, act, &mut da, &mut dz, &mut dg, &mut db,
            );
            close(&dz, &dz_ref, "dz");
            close(&dg, &dg_ref, "dgamma");
            close(&db, &db_ref, "dbeta");
        }
    }

    #[test]
    fn full_conv_and_headless_models_are_refused() {
        let config = MobileNetConfig::new(0.25, 32)
            .expect("valid")
            .with_variant(Variant::FullConv);
        let err = TrainNet::from_model(&ModelFile::random(config, 1), 1).unwrap_err();
        assert!(err
            .to_string()
            .contains("full-conv variant is not implemented"));
        let config = MobileNetConfig::new(0.25, 32)
            .expect("valid")
            .without_head();
        assert_eq!(
            TrainNet::from_model(&ModelFile::random(config, 1), 1).unwrap_err(),
            TrainError::NoHead
        );
    }
}
