//! With batch norm frozen, a training step's forward pass is the inference engine's: Google's
//! pretrained MobileNet gives the same loss in both, and a step at learning rate 0 changes
//! nothing. (Two-stage fine-tuning trains the head on the inference engine's features and then
//! switches to the training network; any gap between the two shows as a jump in the loss.) And
//! the gradient through Google's real statistics (moving variances down to 1e-6, where frozen
//! batch norm multiplies by up to 1/√ε ≈ 32) is the loss's derivative.

mod common;

use mobilenet::import::{import, ImportOptions};
use mobilenet::infer::InferenceModel;
use mobilenet::train::net::{StepOptions, TrainNet};
use mobilenet::train::Rng;
use mobilenet::weights::ModelFile;

#[test]
fn frozen_batch_norm_forward_is_the_inference_forward() {
    let Some((model, images, labels)) =
        official("frozen_batch_norm_forward_is_the_inference_forward", 128)
    else {
        return;
    };
    let batch = labels.len();

    let plan = InferenceModel::new(&model).expect("plan");
    let mut session = plan.session(batch, 1);
    let logits = session.run(&images).to_vec();
    let classes = logits.len() / batch;
    let want: f32 = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let row = &logits[i * classes..(i + 1) * classes];
            let max = row.iter().cloned().fold(f32::MIN, f32::max);
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            max + sum.ln() - row[l]
        })
        .sum::<f32>()
        / batch as f32;

    let mut net = TrainNet::from_model(&model, 1).expect("trainable");
    let mut grads = net.zero_gradients();
    let step = StepOptions {
        bn_frozen: true,
        ..StepOptions::default()
    };
    let stats = net.step(&images, &labels, &mut Rng::new(0), &step, &mut grads);
    assert!(
        (stats.loss - want).abs() <= 1e-3 * want.abs().max(1.0),
        "training forward loss {} vs inference {}",
        stats.loss,
        want
    );
    let after = net.to_model();
    for (name, t) in model.tensors() {
        let got = &after.tensors()[name];
        assert_eq!(got.data, t.data, "{name} changed in a frozen-BN step");
    }
}

/// Google's 1.0 weights at `res` without dropout, four random images and their labels; `None`
/// (after saying why) without the shared data, outside CI.
fn official(test: &str, res: usize) -> Option<(ModelFile, Vec<f32>, [usize; 4])> {
    let path = common::shared_data(test)?
        .join("mobilenet_v1/float/mobilenet_v1_1.0_224_imagenet_float.safetensors");
    let options = ImportOptions {
        resolution: Some(res),
        labels: None,
        ..Default::default()
    };
    let (mut model, _) = import(&path, &options).expect("official weights import");
    model.config = model.config.with_dropout(0.0).expect("no dropout");
    let mut rng = Rng::new(7);
    let images: Vec<f32> = (0..4 * res * res * 3)
        .map(|_| rng.uniform() * 2.0 - 1.0)
        .collect();
    Some((model, images, [3, 281, 500, 999]))
}

/// Along the gradient's own direction, `(L(θ + εĝ) − L(θ − εĝ)) / 2ε ≈ |g|` for the whole
/// pretrained network with frozen batch norm.
#[test]
fn frozen_batch_norm_gradient_on_the_pretrained_network() {
    let Some((model, images, labels)) =
        official("frozen_batch_norm_gradient_on_the_pretrained_network", 64)
    else {
        return;
    };
    let mut net = TrainNet::from_model(&model, 2).expect("trainable");
    let step = StepOptions {
        bn_frozen: true,
        ..StepOptions::default()
    };
    let mut grads = net.zero_gradients();
    net.step(&images, &labels, &mut Rng::new(0), &step, &mut grads);
    let loss_of = |net: &mut TrainNet| {
        let mut scratch = net.zero_gradients();
        net.step(&images, &labels, &mut Rng::new(0), &step, &mut scratch)
            .loss as f64
    };
    common::check_directional_derivative(&mut net, &grads, loss_of);
}
