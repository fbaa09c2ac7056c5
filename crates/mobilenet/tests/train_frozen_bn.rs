//! With batch norm frozen, a training step's forward pass is the inference engine's: Google's
//! pretrained MobileNet gives the same loss in both, and a step at learning rate 0 changes
//! nothing. (Two-stage fine-tuning trains the head on the inference engine's features and then
//! switches to the training network; any gap between the two shows as a jump in the loss.)

mod common;

use mobilenet::import::{import, ImportOptions};
use mobilenet::infer::InferenceModel;
use mobilenet::train::net::{StepOptions, TrainNet};
use mobilenet::train::Rng;

#[test]
fn frozen_batch_norm_forward_is_the_inference_forward() {
    let Some(data) = common::shared_data("frozen_batch_norm_forward_is_the_inference_forward")
    else {
        return;
    };
    let path = data.join("mobilenet_v1/float/mobilenet_v1_1.0_224_imagenet_float.safetensors");
    let options = ImportOptions {
        resolution: Some(128),
        labels: None,
    };
    let (mut model, _) = import(&path, &options).expect("official weights import");
    model.config = model.config.with_dropout(0.0).expect("no dropout");
    let batch = 4;
    let res = model.config.resolution();
    let mut rng = Rng::new(7);
    let images: Vec<f32> = (0..batch * res * res * 3)
        .map(|_| rng.uniform() * 2.0 - 1.0)
        .collect();
    let labels = [3usize, 281, 500, 999];

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
