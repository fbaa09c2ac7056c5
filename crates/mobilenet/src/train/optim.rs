//! Optimisers and learning-rate schedules.
//!
//! | optimiser | update (per element; `g` already includes weight decay) |
//! |---|---|
//! | RMSprop, TensorFlow form (the paper's) | `ms ← ρ·ms + (1−ρ)·g²`; `mom ← μ·mom + lr·g/√(ms + ε)`; `θ ← θ − mom`; `ms` starts at 1 (TF1's `RMSPropOptimizer`) |
//! | RMSprop, PyTorch form | `v ← α·v + (1−α)·g²`; `buf ← μ·buf + g/(√v + ε)`; `θ ← θ − lr·buf`; `v` starts at 0 |
//! | SGD with momentum (PyTorch form) | `buf ← μ·buf + g`; `θ ← θ − lr·buf` |
//! | Adam (Keras and PyTorch form) | `m ← β₁·m + (1−β₁)·g`; `v ← β₂·v + (1−β₂)·g²`; `θ ← θ − lr·m̂/(√v̂ + ε)` with `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)` |
//! | AdamW | Adam on the gradient without weight decay, then `θ ← θ − lr·λ·θ` (decoupled) |
//!
//! Weight decay is L2 as in TF-slim (`λ/2·‖w‖²`, gradient `λ·w`), applied only to the
//! parameters marked `decay` (conv, pointwise and FC weights; never depthwise filters); AdamW
//! decays the same parameters, decoupled from the gradient.

use serde::{Deserialize, Serialize};

use super::net::Param;

/// Which RMSprop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RmsPropVariant {
    /// TensorFlow 1 (`tf.train.RMSPropOptimizer`, used for the paper): ε inside the square root,
    /// learning rate folded into the momentum, mean square initialised to 1.
    Tf,
    /// PyTorch (`torch.optim.RMSprop`): ε outside the square root, learning rate applied after the
    /// momentum, mean square initialised to 0.
    Torch,
}

/// An optimiser and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerKind {
    /// RMSprop with momentum.
    RmsProp {
        /// Which formula.
        variant: RmsPropVariant,
        /// Decay ρ of the mean square (paper: 0.9).
        decay: f32,
        /// Momentum μ (paper: 0.9).
        momentum: f32,
        /// ε (paper: 1.0).
        epsilon: f32,
    },
    /// SGD with momentum.
    Sgd {
        /// Momentum μ.
        momentum: f32,
    },
    /// Adam (Kingma & Ba), with bias correction; Keras's choice for fine-tuning.
    Adam {
        /// Decay β₁ of the first moment (Keras: 0.9).
        beta1: f32,
        /// Decay β₂ of the second moment (Keras: 0.999).
        beta2: f32,
        /// ε outside the square root (Keras: 1e-7).
        epsilon: f32,
        /// AdamW: weight decay decoupled from the gradient (Loshchilov & Hutter) instead of L2.
        decoupled: bool,
    },
}

impl std::fmt::Display for OptimizerKind {
    /// In words: `RMSprop (TF: decay 0.9, momentum 0.9, ε 1)`, `SGD (momentum 0.9)`, `Adam (β₁ 0.9,
    /// β₂ 0.999, ε 1e-7)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            OptimizerKind::RmsProp {
                variant,
                decay,
                momentum,
                epsilon,
            } => {
                let variant = match variant {
                    RmsPropVariant::Tf => "TF",
                    RmsPropVariant::Torch => "PyTorch",
                };
                write!(
                    f,
                    "RMSprop ({variant}: decay {decay}, momentum {momentum}, ε {epsilon})"
                )
            }
            OptimizerKind::Sgd { momentum } => write!(f, "SGD (momentum {momentum})"),
            OptimizerKind::Adam {
                beta1,
                beta2,
                epsilon,
                decoupled,
            } => write!(
                f,
                "{} (β₁ {beta1}, β₂ {beta2}, ε {epsilon:e})",
                if decoupled { "AdamW" } else { "Adam" }
            ),
        }
    }
}

impl std::fmt::Display for Schedule {
    /// In words: `cosine decay after 1 warm-up epoch`, `×0.94 every 2.5 epochs`, `constant`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Schedule::Constant => write!(f, "constant"),
            Schedule::Exponential { rate, every_epochs } => {
                write!(f, "×{rate} every {every_epochs} epochs")
            }
            Schedule::Cosine { warmup_epochs } if warmup_epochs > 0.0 => write!(
                f,
                "cosine decay after {warmup_epochs} warm-up epoch{}",
                if warmup_epochs == 1.0 { "" } else { "s" }
            ),
            Schedule::Cosine { .. } => write!(f, "cosine decay"),
        }
    }
}

impl OptimizerKind {
    /// The paper's RMSprop: TensorFlow form, decay 0.9, momentum 0.9, ε 1.0.
    pub fn paper() -> OptimizerKind {
        OptimizerKind::RmsProp {
            variant: RmsPropVariant::Tf,
            decay: 0.9,
            momentum: 0.9,
            epsilon: 1.0,
        }
    }
}

/// Optimiser state: one or two buffers per parameter, and the step count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Optimizer {
    /// The update rule.
    pub kind: OptimizerKind,
    /// L2 weight decay λ on the parameters marked `decay`.
    pub weight_decay: f32,
    /// Updates applied so far.
    pub step: u64,
    /// Mean squares (RMSprop), one per parameter.
    pub mean_square: Vec<Vec<f32>>,
    /// Momentum buffers, one per parameter.
    pub momentum: Vec<Vec<f32>>,
}

impl Optimizer {
    /// Fresh state for `params`.
    pub fn new(kind: OptimizerKind, weight_decay: f32, params: &[Param]) -> Optimizer {
        let mut optimizer = Optimizer {
            kind,
            weight_decay,
            step: 0,
            mean_square: params.iter().map(|_| Vec::new()).collect(),
            momentum: params.iter().map(|p| vec![0.0; p.value.len()]).collect(),
        };
        optimizer.restart();
        optimizer
    }

    /// Forgets the state (moments, mean squares, step count) as a fresh optimiser on the same
    /// parameters would have it: Keras's recompile between the two stages of fine-tuning. The
    /// classifier's momentum from a frozen phase would otherwise carry its learning rate on
    /// into the second stage (RMSprop's TensorFlow form folds the rate into the momentum).
    pub fn restart(&mut self) {
        let init_ms = match self.kind {
            OptimizerKind::RmsProp {
                variant: RmsPropVariant::Tf,
                ..
            } => Some(1.0),
            OptimizerKind::RmsProp { .. } | OptimizerKind::Adam { .. } => Some(0.0),
            OptimizerKind::Sgd { .. } => None,
        };
        for (ms, mom) in self.mean_square.iter_mut().zip(&mut self.momentum) {
            mom.fill(0.0);
            ms.clear();
            if let Some(v) = init_ms {
                ms.resize(mom.len(), v);
            }
        }
        self.step = 0;
    }

    /// Applies one update with learning rate `lr`.
    ///
    /// # Panics
    ///
    /// If `grads` does not match `params`.
    pub fn update(&mut self, params: &mut [Param], grads: &[Vec<f32>], lr: f32) {
        self.update_from(params, grads, lr, 0);
    }

    /// As [`Optimizer::update`] for the parameters from index `first` on; the others (a
    /// frozen backbone) and their optimiser state are left as they are.
    pub fn update_from(&mut self, params: &mut [Param], grads: &[Vec<f32>], lr: f32, first: usize) {
        self.update_split(params, grads, first, (params.len(), lr, lr));
    }

    /// As [`Optimizer::update_from`] with two learning rates: `(split, before, after)` updates
    /// the parameters in `first..split` at `before` and those from `split` on (the
    /// classifier) at `after`.
    pub fn update_split(
        &mut self,
        params: &mut [Param],
        grads: &[Vec<f32>],
        first: usize,
        (split, before, after): (usize, f32, f32),
    ) {
        assert_eq!(params.len(), grads.len(), "one gradient per parameter");
        self.step += 1;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate().skip(first) {
            let lr = if i < split { before } else { after };
            let wd = if p.decay { self.weight_decay } else { 0.0 };
            let mom = &mut self.momentum[i];
            match self.kind {
                OptimizerKind::RmsProp {
                    variant,
                    decay,
                    momentum,
                    epsilon,
                } => {
                    // One loop per variant over zipped slices: no bounds checks, so the
                    // compiler vectorises the square roots and divisions (11 ms → ~1 ms a step
                    // for α 0.5's 0.8M parameters).
                    let ms = &mut self.mean_square[i];
                    let state = p
                        .value
                        .iter_mut()
                        .zip(g)
                        .zip(ms.iter_mut().zip(mom.iter_mut()));
                    match variant {
                        RmsPropVariant::Tf => {
                            for ((w, &g), (ms, mom)) in state {
                                let grad = g + wd * *w;
                                *ms = decay * *ms + (1.0 - decay) * grad * grad;
                                *mom = momentum * *mom + lr * grad / (*ms + epsilon).sqrt();
                                *w -= *mom;
                            }
                        }
                        RmsPropVariant::Torch => {
                            for ((w, &g), (ms, mom)) in state {
                                let grad = g + wd * *w;
                                *ms = decay * *ms + (1.0 - decay) * grad * grad;
                                *mom = momentum * *mom + grad / (ms.sqrt() + epsilon);
                                *w -= lr * *mom;
                            }
                        }
                    }
                }
                OptimizerKind::Sgd { momentum } => {
                    for ((w, &g), mom) in p.value.iter_mut().zip(g).zip(mom.iter_mut()) {
                        let grad = g + wd * *w;
                        *mom = momentum * *mom + grad;
                        *w -= lr * *mom;
                    }
                }
                OptimizerKind::Adam {
                    beta1,
                    beta2,
                    epsilon,
                    decoupled,
                } => {
                    let v = &mut self.mean_square[i];
                    let t = self.step as i32;
                    let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
                    let (l2, shrink) = match decoupled {
                        false => (wd, 1.0),
                        true => (0.0, 1.0 - lr * wd),
                    };
                    let state = p
                        .value
                        .iter_mut()
                        .zip(g)
                        .zip(mom.iter_mut().zip(v.iter_mut()));
                    for ((w, &g), (m, v)) in state {
                        let grad = g + l2 * *w;
                        *m = beta1 * *m + (1.0 - beta1) * grad;
                        *v = beta2 * *v + (1.0 - beta2) * grad * grad;
                        let step = lr * (*m / c1) / ((*v / c2).sqrt() + epsilon);
                        *w = *w * shrink - step;
                    }
                }
            }
        }
    }
}

/// How the learning rate changes over training.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The same rate throughout.
    Constant,
    /// TF-slim's staircase decay: `lr · rate^⌊epoch / every⌋` (e.g. ×0.94 every 2.5 epochs).
    Exponential {
        /// Factor per period.
        rate: f32,
        /// Period in epochs (may be fractional).
        every_epochs: f32,
    },
    /// Linear warm-up from 0 over `warmup_epochs`, then cosine decay to 0 at the end of training.
    Cosine {
        /// Warm-up length in epochs.
        warmup_epochs: f32,
    },
}

impl Schedule {
    /// The learning rate at a (fractional) `epoch` of `total_epochs`, for base rate `lr`.
    pub fn rate(&self, lr: f32, epoch: f32, total_epochs: f32) -> f32 {
        match *self {
            Schedule::Constant => lr,
            Schedule::Exponential { rate, every_epochs } => {
                lr * rate.powf((epoch / every_epochs.max(1e-6)).floor())
            }
            Schedule::Cosine { warmup_epochs } => {
                if epoch < warmup_epochs {
                    lr * epoch / warmup_epochs
                } else {
                    let span = (total_epochs - warmup_epochs).max(1e-6);
                    let t = ((epoch - warmup_epochs) / span).clamp(0.0, 1.0);
                    lr * 0.5 * (1.0 + (std::f32::consts::PI * t).cos())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(values: &[f32], decay: bool) -> Param {
        Param {
            name: "p".into(),
            shape: vec![values.len()],
            value: values.to_vec(),
            decay,
        }
    }

    #[test]
    fn tf_rmsprop_matches_the_formula_by_hand() {
        let mut params = vec![param(&[1.0, -2.0], false)];
        let mut opt = Optimizer::new(OptimizerKind::paper(), 0.0, &params);
        opt.update(&mut params, &[vec![0.5, -1.0]], 0.1);
        // ms = 0.9·1 + 0.1·g²; mom = 0.1·g/√(ms + 1).
        let ms0 = 0.9 + 0.1 * 0.25f32;
        let ms1 = 0.9 + 0.1 * 1.0f32;
        let m0 = 0.1 * 0.5 / (ms0 + 1.0).sqrt();
        let m1 = -0.1 / (ms1 + 1.0).sqrt(); // lr · g with g = −1
        assert!((params[0].value[0] - (1.0 - m0)).abs() < 1e-7);
        assert!((params[0].value[1] - (-2.0 - m1)).abs() < 1e-7);
        opt.update(&mut params, &[vec![0.5, -1.0]], 0.1);
        let ms0b = 0.9 * ms0 + 0.1 * 0.25;
        let m0b = 0.9 * m0 + 0.1 * 0.5 / (ms0b + 1.0).sqrt();
        assert!((params[0].value[0] - (1.0 - m0 - m0b)).abs() < 1e-6);
        assert_eq!(opt.step, 2);
    }

    #[test]
    fn torch_rmsprop_and_sgd_and_weight_decay() {
        let kind = OptimizerKind::RmsProp {
            variant: RmsPropVariant::Torch,
            decay: 0.99,
            momentum: 0.0,
            epsilon: 1e-8,
        };
        let mut params = vec![param(&[1.0], false)];
        let mut opt = Optimizer::new(kind, 0.0, &params);
        opt.update(&mut params, &[vec![2.0]], 0.01);
        // v = 0.01·4 = 0.04; step = lr·g/(√v + ε) = 0.01·2/0.2 = 0.1.
        assert!((params[0].value[0] - 0.9).abs() < 1e-6);

        let mut params = vec![param(&[1.0], true), param(&[1.0], false)];
        let mut opt = Optimizer::new(OptimizerKind::Sgd { momentum: 0.5 }, 0.1, &params);
        opt.update(&mut params, &[vec![1.0], vec![1.0]], 0.1);
        // Decayed: g = 1 + 0.1·1 = 1.1 → 0.89; not decayed: 0.9.
        assert!((params[0].value[0] - 0.89).abs() < 1e-6);
        assert!((params[1].value[0] - 0.9).abs() < 1e-6);
        opt.update(&mut params, &[vec![0.0], vec![0.0]], 0.1);
        // Momentum carries on: buf = 0.5·1.1 + 0.1·0.89 = 0.639.
        assert!((params[0].value[0] - (0.89 - 0.1 * 0.639)).abs() < 1e-6);
    }

    #[test]
    fn adam_and_adamw_match_the_formula_by_hand() {
        let adam = |decoupled| OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            decoupled,
        };
        // Two steps of Adam with L2: the bias-corrected step is lr·sign(g) on the first step.
        let mut params = vec![param(&[1.0, -2.0], true)];
        let mut opt = Optimizer::new(adam(false), 0.1, &params);
        opt.update(&mut params, &[vec![0.5, -1.0]], 0.01);
        assert!((params[0].value[0] - 0.99).abs() < 1e-6); // g = 0.5 + 0.1·1 > 0
        assert!((params[0].value[1] - (-2.0 + 0.01)).abs() < 1e-6); // g = −1 − 0.2 < 0
        let g1 = 0.5 + 0.1 * 1.0f32;
        let g2 = 0.5 + 0.1 * 0.99f32;
        opt.update(&mut params, &[vec![0.5, -1.0]], 0.01);
        let m = 0.9 * 0.1 * g1 + 0.1 * g2;
        let v = 0.999 * 0.001 * g1 * g1 + 0.001 * g2 * g2;
        let step = 0.01 * (m / (1.0 - 0.81)) / ((v / (1.0 - 0.999f32.powi(2))).sqrt() + 1e-7);
        assert!((params[0].value[0] - (0.99 - step)).abs() < 1e-6);

        // AdamW: the gradient alone drives the moments; the weight shrinks by lr·λ.
        let mut params = vec![param(&[1.0], true), param(&[1.0], false)];
        let mut opt = Optimizer::new(adam(true), 0.1, &params);
        opt.update(&mut params, &[vec![0.5], vec![0.5]], 0.01);
        assert!((params[0].value[0] - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6);
        assert!((params[1].value[0] - 0.99).abs() < 1e-6);
    }

    #[test]
    fn restart_forgets_the_state_and_split_rates_apply() {
        let mut params = vec![param(&[1.0], false), param(&[1.0], false)];
        let mut opt = Optimizer::new(OptimizerKind::paper(), 0.0, &params);
        let fresh = opt.clone();
        opt.update_split(&mut params, &[vec![1.0], vec![1.0]], 0, (1, 0.1, 0.2));
        // Each rate as the formula gives it: lr·g/√(0.9 + 0.1 + 1).
        assert!((params[0].value[0] - (1.0 - 0.1 / 2f32.sqrt())).abs() < 1e-6);
        assert!((params[1].value[0] - (1.0 - 0.2 / 2f32.sqrt())).abs() < 1e-6);
        assert_ne!(opt, fresh);
        opt.restart();
        assert_eq!(opt, fresh);
    }

    #[test]
    fn schedules() {
        let exp = Schedule::Exponential {
            rate: 0.94,
            every_epochs: 2.5,
        };
        assert_eq!(exp.rate(0.045, 0.0, 10.0), 0.045);
        assert_eq!(exp.rate(0.045, 2.4, 10.0), 0.045);
        assert!((exp.rate(0.045, 2.5, 10.0) - 0.045 * 0.94).abs() < 1e-9);
        assert!((exp.rate(0.045, 5.1, 10.0) - 0.045 * 0.94 * 0.94).abs() < 1e-9);
        let cos = Schedule::Cosine { warmup_epochs: 1.0 };
        assert_eq!(cos.rate(0.1, 0.0, 11.0), 0.0);
        assert!((cos.rate(0.1, 0.5, 11.0) - 0.05).abs() < 1e-7);
        assert!((cos.rate(0.1, 1.0, 11.0) - 0.1).abs() < 1e-7);
        assert!((cos.rate(0.1, 6.0, 11.0) - 0.05).abs() < 1e-6);
        assert!(cos.rate(0.1, 11.0, 11.0).abs() < 1e-7);
        assert_eq!(Schedule::Constant.rate(0.3, 7.0, 9.0), 0.3);
    }
}
