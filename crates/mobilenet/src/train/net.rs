//! The trainable network: parameters, a training step (forward with batch statistics, backward
//! to gradients), and conversion to and from model files.
//!
//! Layout: NHWC activations, conv weights `[k, k, cin, cout]`, depthwise `[3, 3, c]`, pointwise
//! `[cin, cout]`, FC `[cin, classes]` — the model file's layouts, so parameters move between
//! the two by name. Evaluation goes through [`crate::InferenceModel`] (batch norm folded, with
//! the moving statistics).

use std::collections::BTreeMap;

use mobilenet_kernels::Isa;

use super::bn::{bn_act_backward, bn_act_forward, BnCache};
use super::conv::ConvLayer;
use super::head::{self, fc_backward, fc_forward};
use super::Rng;
use crate::config::{MobileNetConfig, Variant};
use crate::exec::{resolve_threads, SpinPool};
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
        let bad = |e: crate::ModelError| TrainError::Weights(e.to_string());
        let mut push = |name: String, value: &[f32], decay: bool| {
            let shape = model
                .tensors
                .get(&name)
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
            template: ModelFile {
                tensors: BTreeMap::new(),
                ..model.clone()
            },
            isa: Isa::detect(),
            pool: SpinPool::new(resolve_threads(threads)),
            state: StepState::default(),
        })
    }

    /// The network's configuration.
    pub fn config(&self) -> &MobileNetConfig {
        &self.config
    }

    /// Uses another instruction set of this CPU (tests compare them).
    pub fn set_isa(&mut self, isa: Isa) {
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
            let conv = self.convs[li]
                .as_ref()
                .unwrap_or_else(|| unreachable!("convs are layers with parameters"));
            let w = &self.params[p.weight].value;
            conv.forward(&mut self.pool, self.isa, w, &st.acts[j], &mut z, batch);
            let layer = &self.layers[li];
            let c = layer.output[2];
            let mut a = std::mem::take(&mut st.acts[j + 1]);
            a.resize(out_len, 0.0);
            let (gamma, beta) = (&self.params[p.gamma].value, &self.params[p.beta].value);
            let act = self.config.activation();
            let (cache, var) = bn_act_forward(
                &mut self.pool,
                self.isa,
                &z,
                c,
                gamma,
                beta,
                self.bn_eps,
                act,
                &mut a,
            );
            if options.update_bn_stats {
                let d = options.bn_decay;
                let mean_name = names::bn(&layer.name, BnTensor::MovingMean);
                let var_name = names::bn(&layer.name, BnTensor::MovingVariance);
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
        head::avgpool_forward(&st.acts[convs.len()], batch, pixels, fc, &mut st.pooled);
        let dropout = self.config.head().map_or(0.0, |h| h.dropout) as f32;
        head::dropout_forward(&mut st.pooled, dropout, rng, &mut st.dropout_mask);
        let nfc = self.fc_param;
        let (fc_w, fc_b) = (&self.params[nfc].value, &self.params[nfc + 1].value);
        st.logits.resize(batch * classes, 0.0);
        fc_forward(
            self.isa,
            &st.pooled,
            (fc_w, fc_b),
            fc,
            classes,
            &mut st.logits,
        );
        st.dlogits.resize(batch * classes, 0.0);
        let (loss, correct) = head::softmax_cross_entropy(
            &st.logits,
            labels,
            classes,
            options.label_smoothing,
            &mut st.dlogits,
        );

        // Backward: classifier.
        let mut dpooled = vec![0.0; batch * fc];
        {
            let (dw, db) = grads[nfc..].split_at_mut(1);
            let dims = (fc, classes);
            let (pooled, dlogits) = (&st.pooled, &st.dlogits);
            fc_backward(
                self.isa,
                pooled,
                dlogits,
                fc_w,
                dims,
                &mut dw[0],
                &mut db[0],
                &mut dpooled,
            );
        }
        head::dropout_backward(&st.dropout_mask, &mut dpooled);
        let mut da = std::mem::take(&mut st.grad_a);
        da.resize(batch * pixels * fc, 0.0);
        head::avgpool_backward(&dpooled, batch, pixels, fc, &mut da);

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
                    self.isa,
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
            let conv = self.convs[li]
                .as_ref()
                .unwrap_or_else(|| unreachable!("convs are layers with parameters"));
            let w = &self.params[p.weight].value;
            let x = &st.acts[j];
            conv.backward(
                &mut self.pool,
                self.isa,
                w,
                x,
                &dz,
                dw,
                dx,
                batch,
                &mut st.scratch,
            );
        }
        st.grad_a = da;
        st.grad_b = dz;
        self.state = st;
        StepStats { loss, correct }
    }
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
