//! The trainable network: parameters, a training step (forward with batch statistics, backward
//! to gradients), and conversion to and from model files.
//!
//! Layout: NHWC activations, conv weights `[k, k, cin, cout]`, depthwise `[3, 3, c]`, pointwise
//! `[cin, cout]`, FC `[cin, classes]` — the model file's layouts, so parameters move between
//! the two by name. Evaluation goes through [`crate::InferenceModel`] (batch norm folded, with
//! the moving statistics).

use std::collections::BTreeMap;
use std::time::Instant;

use mobilenet_kernels::Isa;

mod classifier;
mod group;
mod precision;

use super::bn::{bn_act_backward_sums, bn_act_backward_sums_all, bn_act_forward, Moments};
use super::bn::{bn_act_forward_fixed, BnCache};
use super::conv::{ConvLayer, SumsFn};
use super::head;
use super::profile::{TrainOp, TrainProfile};
pub use super::step::{Distill, StepOptions, StepStats};
use super::Rng;
use crate::config::{MobileNetConfig, Variant};
use crate::exec::{resolve_threads, SpinPool};
use crate::infer::Precision;
use crate::layers::{Layer, LayerKind};
use crate::weights::{names, BnTensor, ModelFile, Tensor};

/// Why a network cannot be trained.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TrainError {
    /// Only the standard and shallow networks have backward passes.
    #[error("training the {0} variant is not implemented (its full 3×3 convolutions have no input gradient kernel)")]
    Variant(Variant),
    /// A model without a classifier cannot compute a classification loss.
    #[error("the model has no classifier head to train")]
    NoHead,
    /// A weight the layer table needs is missing or of the wrong size.
    #[error("{0}")]
    Weights(String),
    /// The CPU cannot train at the precision asked for.
    #[error("{0}")]
    Precision(String),
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
    /// The convolution of each layer that has one.
    convs: Vec<Option<ConvLayer>>,
    /// Trainable tensors, in layer order.
    pub params: Vec<Param>,
    /// Batch-norm moving statistics by model-file name.
    pub buffers: BTreeMap<String, Vec<f32>>,
    bn_eps: f32,
    /// Index of the classifier's weight in `params` (its bias follows).
    fc_param: usize,
    template: ModelFile,
    isa: Isa,
    /// The arithmetic of the pointwise GEMMs ([`TrainNet::set_precision`]).
    precision: Precision,
    pool: SpinPool,
    state: StepState,
    /// Seconds per operation, when asked for.
    profile: Option<TrainProfile>,
    /// The ranks this one trains with (data parallelism), if any, and this step's share of
    /// the global batch with the global batch's size.
    group: Option<super::dist::Group>,
    group_share: (f64, usize),
    /// Allreduces the last step's gradients took in a group (0 outside one).
    gradient_allreduces: usize,
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
    /// The other gradient buffer: a layer writes its input gradient here, then the two swap.
    grad_spare: Vec<f32>,
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
        let bad = |e: crate::ModelError| TrainError::Weights(e.to_string());
        let mut push = |name: String, value: &[f32], decay: bool| {
            let shape = model
                .tensor(&name)
                .map_or(vec![value.len()], |t| t.shape.clone());
            params.push(Param {
                name,
                shape,
                value: value.to_vec(),
                decay,
            });
        };
        for layer in &layers {
            match layer.kind {
                LayerKind::AvgPool => {}
                LayerKind::Fc => {
                    let fc = model.fc(layer).map_err(bad)?;
                    push(names::FC_WEIGHT.into(), fc.weight, true);
                    push(names::FC_BIAS.into(), fc.bias, false);
                }
                kind => {
                    let w = model.conv(layer).map_err(bad)?;
                    let name = &layer.name;
                    push(names::weight(name), w.weight, kind != LayerKind::Depthwise);
                    push(names::bn(name, BnTensor::Gamma), w.bn.gamma, false);
                    push(names::bn(name, BnTensor::Beta), w.bn.beta, false);
                    let mean = names::bn(name, BnTensor::MovingMean);
                    buffers.insert(mean, w.bn.mean.to_vec());
                    let var = names::bn(name, BnTensor::MovingVariance);
                    buffers.insert(var, w.bn.variance.to_vec());
                }
            }
        }
        let fc_param = params
            .iter()
            .position(|p| p.name == names::FC_WEIGHT)
            .ok_or(TrainError::NoHead)?;
        let convs = layers
            .iter()
            .map(|l| match l.kind {
                LayerKind::Conv | LayerKind::Depthwise | LayerKind::Pointwise => {
                    Some(ConvLayer::new(l, config.padding()))
                }
                LayerKind::AvgPool | LayerKind::Fc => None,
            })
            .collect();
        Ok(TrainNet {
            config,
            layers,
            convs,
            params,
            buffers,
            bn_eps: model.bn_epsilon,
            fc_param,
            template: model.without_tensors(),
            isa: Isa::detect(),
            precision: Precision::F32,
            pool: SpinPool::new(resolve_threads(threads)),
            state: StepState::default(),
            profile: None,
            group: None,
            group_share: (1.0, 0),
            gradient_allreduces: 0,
        })
    }

    /// About how many bytes training `config` on batches of `batch` takes: the activations
    /// and pre-activations of every convolution kept for the backward pass, two gradient
    /// buffers of the largest, and four copies of the parameters (values, gradients, the
    /// optimiser's two states).
    pub fn memory_bytes(config: &MobileNetConfig, batch: usize) -> u64 {
        let layers = config.layers();
        let outputs = layers
            .iter()
            .map(|l| l.output.iter().product::<usize>() as u64);
        let (sum, max) = outputs.fold((0, 0), |(s, m), o| (s + o, m.max(o)));
        let params = crate::ModelCost::of(config).total.params();
        4 * (batch.max(1) as u64 * (2 * sum + 2 * max) + 4 * params)
    }

    /// The network's configuration.
    pub fn config(&self) -> &MobileNetConfig {
        &self.config
    }

    /// Starts timing every operation of the steps (see [`TrainProfile`]), or stops.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(TrainProfile::default);
    }

    /// The time per operation so far, when profiling.
    pub fn profile(&self) -> Option<&TrainProfile> {
        self.profile.as_ref()
    }

    /// The profile to add the trainer's own operations to, when profiling.
    pub fn profile_mut(&mut self) -> Option<&mut TrainProfile> {
        self.profile.as_mut()
    }

    /// A clock read for an operation about to run, when profiling.
    fn clock(&self) -> Option<Instant> {
        self.profile.is_some().then(Instant::now)
    }

    /// Adds the time since `start` to `op`.
    fn record(&mut self, op: TrainOp, start: Option<Instant>) {
        if let (Some(p), Some(start)) = (&mut self.profile, start) {
            p.add(op, start);
        }
    }

    /// Uses another instruction set of this CPU (tests compare them). In bf16
    /// ([`TrainNet::set_precision`]) it must stay AVX-512: the next step panics otherwise.
    pub fn set_isa(&mut self, isa: Isa) {
        self.isa = isa;
    }

    /// The current weights and statistics as a model file (labels and preprocessing kept).
    pub fn to_model(&self) -> ModelFile {
        let mut model = self.template.clone();
        for p in &self.params {
            let t = Tensor::new(p.shape.clone(), p.value.clone());
            model.insert_tensor(p.name.clone(), t);
        }
        for (name, v) in &self.buffers {
            let shape = vec![v.len()];
            model.insert_tensor(name.clone(), Tensor::new(shape, v.clone()));
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
        self.step_with(images, labels, None, rng, options, grads)
    }

    /// A step as [`TrainNet::step`] whose loss also follows a teacher: `soft` holds its
    /// probabilities at the temperature of `options.distill` (`batch × classes`, see
    /// [`head::soften`]), mixed with the labels as [`Distill`] says.
    ///
    /// # Panics
    ///
    /// As [`TrainNet::step`], and if `soft` is not `batch × classes`.
    pub fn step_distilled(
        &mut self,
        images: &[f32],
        labels: &[usize],
        soft: &[f32],
        rng: &mut Rng,
        options: &StepOptions,
        grads: &mut [Vec<f32>],
    ) -> StepStats {
        self.step_with(images, labels, Some(soft), rng, options, grads)
    }

    fn step_with(
        &mut self,
        images: &[f32],
        labels: &[usize],
        soft: Option<&[f32]>,
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
        self.group_start(batch);
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
            let conv = self.convs[li]
                .as_ref()
                .unwrap_or_else(|| unreachable!("convs are layers with parameters"));
            let w = &self.params[p.weight].value;
            let t = self.clock();
            // Batch statistics, unless the moving ones normalise (frozen batch norm).
            let fixed = options.bn_frozen || j < options.frozen_layers;
            let x = &st.acts[j];
            let moments = conv.forward(&mut self.pool, self.isa, w, x, &mut z, batch, !fixed);
            let kind = self.layers[li].kind;
            self.record(op_of(kind, TrainOp::StemForward), t);
            let c = self.layers[li].output[2];
            let moments = match fixed {
                true => moments,
                false => self.group_moments(moments, &z, c),
            };
            let t = self.clock();
            let layer = &self.layers[li];
            let c = layer.output[2];
            let mut a = std::mem::take(&mut st.acts[j + 1]);
            a.resize(out_len, 0.0);
            let (gamma, beta) = (&self.params[p.gamma].value, &self.params[p.beta].value);
            let act = self.config.activation();
            let mean_name = names::bn(&layer.name, BnTensor::MovingMean);
            let var_name = names::bn(&layer.name, BnTensor::MovingVariance);
            if fixed {
                // The moving statistics normalise, and stay as they are.
                let stats = (&self.buffers[&mean_name][..], &self.buffers[&var_name][..]);
                st.bn[j] = bn_act_forward_fixed(
                    &mut self.pool,
                    self.isa,
                    &z,
                    (gamma, beta),
                    stats,
                    self.bn_eps,
                    act,
                    &mut a,
                );
                st.zs[j] = z;
                st.acts[j + 1] = a;
                self.record(TrainOp::BnForward, t);
                continue;
            }
            let (cache, mut var) = bn_act_forward(
                &mut self.pool,
                self.isa,
                (&z, moments),
                c,
                gamma,
                beta,
                self.bn_eps,
                act,
                &mut a,
            );
            self.group_variance(&mut var, z.len() / c);
            if options.update_bn_stats {
                let d = options.bn_decay;
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
            self.record(TrainOp::BnForward, t);
        }
        let t = self.clock();
        let last = &self.layers[*convs.last().unwrap_or_else(|| unreachable!("conv layers"))];
        let [fh, fw, fc] = last.output;
        let pixels = fh * fw;
        st.pooled.resize(batch * fc, 0.0);
        head::avgpool_forward(&st.acts[convs.len()], batch, pixels, fc, &mut st.pooled);
        let (stats, dpooled) = self.classifier_step(&mut st, labels, soft, rng, options, grads);
        // In a group, gradients leave in buckets as the backward pass finishes their layers.
        let collective = self.group.as_ref().map(|g| g.collective.clone());
        let mut buckets = self.group_buckets(collective.as_deref(), grads);
        let StepStats { loss, correct } = stats;
        // The gradient buffers only grow (every use overwrites the part it takes): resizing
        // them per layer zero-filled each growth, 1% of a step.
        let mut da = std::mem::take(&mut st.grad_a);
        at_least(&mut da, batch * pixels * fc);
        head::avgpool_backward(&dpooled, batch, pixels, fc, &mut da[..batch * pixels * fc]);
        self.record(TrainOp::Head, t);

        // Backward: conv layers, last to first, down to the first one that trains.
        let mut spare = std::mem::take(&mut st.grad_spare);
        let trained = options.frozen_layers.min(convs.len());
        // Batch norm's backward sums of the next layer down, taken by this one's dX pass.
        let mut sums = None;
        for (j, &li) in convs.iter().enumerate().skip(trained).rev() {
            let p = lp[li].unwrap_or_else(|| unreachable!("convs are layers with parameters"));
            let need_dx = j > trained;
            let dab = (&mut da, &mut spare);
            sums = self.layer_backward(&st, (j, li, p), dab, (need_dx, sums.take()), grads);
            self.group_ready(buckets.as_mut(), grads, [p.weight, p.gamma, p.beta]);
        }
        st.grad_a = da;
        st.grad_spare = spare;
        self.state = st;
        let stats = StepStats { loss, correct };
        let moved = options.update_bn_stats && !options.bn_frozen;
        self.group_finish(grads, buckets, stats, batch, moved)
    }

    /// Batch norm's and the convolution's backward pass for conv layer `j` (`li` in the
    /// table): batch norm's sums (`sums` when the layer above took them), then dZ made a block
    /// at a time inside the convolution's pass ([`ConvLayer::backward`]). The input gradient,
    /// if asked, is written to `spare` and the buffers swap, so `da` holds it after; the sums
    /// of layer `j − 1`'s batch norm, taken over it block by block, are returned.
    fn layer_backward(
        &mut self,
        st: &StepState,
        (j, li, p): (usize, usize, LayerParams),
        (da, spare): (&mut Vec<f32>, &mut Vec<f32>),
        (need_dx, sums): (bool, Option<Moments>),
        grads: &mut [Vec<f32>],
    ) -> Option<Moments> {
        let (batch, layer) = (st.batch, &self.layers[li]);
        let out_len = batch * layer.output.iter().product::<usize>();
        let in_len = batch * layer.input.iter().product::<usize>();
        let (act, isa) = (self.config.activation(), self.isa);
        let (z, d) = (&st.zs[j][..], &da[..out_len]);
        let sums = self.group_backward_sums(sums, (z, d), &st.bn[j], layer.output[2]);
        let t = self.clock();
        let grad = {
            let (lo, hi) = grads.split_at_mut(p.beta);
            let gamma = &self.params[p.gamma].value;
            let cache = &st.bn[j];
            let dgb = (&mut lo[p.gamma][..], &mut hi[0][..]);
            bn_act_backward_sums_all(&mut self.pool, isa, (z, d), sums, cache, gamma, act, dgb)
        };
        self.record(TrainOp::BnBackward, t);
        let t = self.clock();
        if need_dx {
            at_least(spare, in_len);
        }
        let conv = self.convs[li]
            .as_ref()
            .unwrap_or_else(|| unreachable!("convs are layers with parameters"));
        // Layer j − 1's batch norm (unused when no dX is asked, as for j = 0).
        let below = j.saturating_sub(1);
        let c_below = self.layers[li].input[2];
        let (z_below, cache_below) = (&st.zs[below][..], &st.bn[below]);
        let sums_of = |first: usize, block: &[f32]| {
            let zb = &z_below[first * c_below..first * c_below + block.len()];
            bn_act_backward_sums(isa, zb, block, c_below, cache_below, act)
        };
        let sums = conv.backward(
            &mut self.pool,
            isa,
            &self.params[p.weight].value,
            &st.acts[j],
            &|first, out| grad.apply(isa, (z, d), first, out),
            &mut grads[p.weight],
            need_dx.then(|| (&mut spare[..in_len], &sums_of as &SumsFn)),
            batch,
        );
        if need_dx {
            std::mem::swap(da, spare);
        }
        self.record(op_of(self.layers[li].kind, TrainOp::StemBackward), t);
        sums
    }

    /// Index of the classifier's first parameter (the ones [`TrainNet::head_step`] trains).
    pub fn classifier_param(&self) -> usize {
        self.fc_param
    }
}

/// The profile slot of a convolution of `kind`: depthwise, pointwise, or `stem` (the forward
/// or backward slot of the full 3×3 convolutions).
/// Grows `v` to at least `len` values (new ones zero); never shrinks it.
fn at_least(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

fn op_of(kind: LayerKind, stem: TrainOp) -> TrainOp {
    let forward = stem == TrainOp::StemForward;
    match (kind, forward) {
        (LayerKind::Depthwise, true) => TrainOp::DepthwiseForward,
        (LayerKind::Depthwise, false) => TrainOp::DepthwiseBackward,
        (LayerKind::Pointwise, true) => TrainOp::PointwiseForward,
        (LayerKind::Pointwise, false) => TrainOp::PointwiseBackward,
        _ => stem,
    }
}

/// Whether `l` is a convolution (with batch norm), not the pool or the classifier.
fn is_conv(l: &Layer) -> bool {
    !matches!(l.kind, LayerKind::AvgPool | LayerKind::Fc)
}
