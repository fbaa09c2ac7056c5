//! The step both data-parallel tests take (ranks as threads, ranks under mpirun): a seeded α
//! 0.25 network at 32×32 without dropout, a seeded batch of 8, one step and an RMSprop update.

use mobilenet::train::net::{StepOptions, TrainNet};
use mobilenet::train::optim::{Optimizer, OptimizerKind};
use mobilenet::train::Rng;
use mobilenet::{MobileNetConfig, ModelFile};

/// Images in the global batch.
pub const BATCH: usize = 8;
/// Input resolution.
pub const RES: usize = 32;

pub fn model() -> ModelFile {
    let config = MobileNetConfig::new(0.25, RES)
        .and_then(|c| c.with_classes(10))
        .and_then(|c| c.with_dropout(0.0))
        .expect("should succeed");
    ModelFile::random(config, 11)
}

/// The global batch: images (NHWC) and labels.
pub fn batch() -> (Vec<f32>, Vec<usize>) {
    let mut rng = Rng::new(3);
    let images = rng.signed_vec(BATCH * RES * RES * 3);
    let labels = (0..BATCH).map(|i| (i * 7) % 10).collect();
    (images, labels)
}

/// What one step leaves: gradients, parameters after an RMSprop update, moving statistics.
pub struct After {
    pub grads: Vec<Vec<f32>>,
    pub params: Vec<Vec<f32>>,
    pub buffers: Vec<Vec<f32>>,
    pub loss: f32,
    /// Allreduces the gradients took.
    pub allreduces: usize,
}

pub fn step(net: &mut TrainNet, images: &[f32], labels: &[usize]) -> After {
    let mut grads = net.zero_gradients();
    let stats = net.step(
        images,
        labels,
        &mut Rng::new(0),
        &StepOptions::default(),
        &mut grads,
    );
    let mut opt = Optimizer::new(OptimizerKind::paper(), 4e-5, &net.params);
    opt.update(&mut net.params, &grads, 0.01);
    After {
        grads,
        params: net.params.iter().map(|p| p.value.clone()).collect(),
        buffers: net.buffers.values().cloned().collect(),
        loss: stats.loss,
        allreduces: net.last_gradient_allreduces(),
    }
}
