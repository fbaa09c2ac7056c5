//! Seeded random starting weights.

use std::collections::BTreeMap;

use super::{names, tensor_specs, ModelFile, Tensor, DEFAULT_BN_EPSILON};
use crate::config::MobileNetConfig;
use crate::preprocess::Preprocessing;
use crate::Rng;

/// How [`ModelFile::random_with`] draws the starting weights. Batch norm starts as the identity
/// (γ 1, β 0, moving mean 0, variance 1) in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightInit {
    /// He-scaled uniform: U(±√(6/fan_in)), variance 2/fan_in, for convolutions and the FC; zero
    /// FC bias.
    He,
    /// PyTorch's module defaults (`Conv2d`, `Linear`: Kaiming-uniform with a = √5):
    /// U(±1/√fan_in), variance 1/(3·fan_in), and the FC bias U(±1/√fan_in).
    Torch,
}

impl ModelFile {
    /// A model with seeded random weights ([`WeightInit::He`]): for benchmarks and tests.
    pub fn random(config: MobileNetConfig, seed: u64) -> ModelFile {
        ModelFile::random_with(config, seed, WeightInit::He)
    }

    /// A model with seeded random weights drawn as `init` says: the starting point of training
    /// from scratch.
    pub fn random_with(config: MobileNetConfig, seed: u64, init: WeightInit) -> ModelFile {
        let mut rng = Rng::new(seed);
        let mut uniform = move || rng.signed();
        let mut tensors = BTreeMap::new();
        let specs = tensor_specs(&config);
        let fc_fan_in = specs
            .iter()
            .find(|s| s.name == names::FC_WEIGHT)
            .map_or(1, |s| s.shape[0]);
        for spec in specs {
            if spec.optional {
                continue;
            }
            let n: usize = spec.shape.iter().product();
            let leaf = spec.name.rsplit('/').next().unwrap_or("");
            let data: Vec<f32> = match leaf {
                "gamma" | "moving_variance" => vec![1.0; n],
                "bias" if spec.name == names::FC_BIAS && init == WeightInit::Torch => {
                    let a = 1.0 / (fc_fan_in.max(1) as f32).sqrt();
                    (0..n).map(|_| a * uniform()).collect()
                }
                "beta" | "moving_mean" | "bias" => vec![0.0; n],
                _ => {
                    // Fan-in: everything but the output-channel axis (depthwise: the 3×3 taps).
                    let fan_in = if spec.shape.len() == 3 {
                        spec.shape[0] * spec.shape[1]
                    } else {
                        n / spec.shape.last().copied().unwrap_or(1)
                    };
                    // Uniform on [-a, a] has variance a²/3.
                    let a = match init {
                        WeightInit::He => (6.0 / fan_in.max(1) as f32).sqrt(),
                        WeightInit::Torch => 1.0 / (fan_in.max(1) as f32).sqrt(),
                    };
                    (0..n).map(|_| a * uniform()).collect()
                }
            };
            tensors.insert(spec.name, Tensor::new(spec.shape, data));
        }
        ModelFile {
            config,
            bn_epsilon: DEFAULT_BN_EPSILON,
            preprocessing: Preprocessing::default(),
            labels: None,
            tensors,
        }
    }
}
