//! One full training step (forward with batch statistics, backward, TF1 RMSProp update with weight
//! decay, moving statistics) against TensorFlow, on the fixture written by
//! `fixtures/gen_train_step_tf.py` (α 0.25, 32×32 with the small-input stem, batch 4).

use std::collections::BTreeMap;
use std::path::PathBuf;

use mobilenet::train::net::{StepOptions, TrainNet};
use mobilenet::train::optim::{Optimizer, OptimizerKind};
use mobilenet::train::Rng;
use mobilenet::weights::{ModelFile, Tensor};
use mobilenet::{MobileNetConfig, Stem};
use safetensors::SafeTensors;

fn f32s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let data = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), data)
}

/// Largest |a − b| allowed, relative to the tensor's largest |b|.
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= rel * scale,
        "{what}: max |Δ| {worst} with max |value| {scale}"
    );
}

#[test]
fn one_training_step_matches_tensorflow() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/train_step_tf.safetensors");
    let bytes = std::fs::read(&path).expect("fixture (fixtures/gen_train_step_tf.py writes it)");
    let st = SafeTensors::deserialize(&bytes).expect("fixture parses");

    let config = MobileNetConfig::new(0.25, 32)
        .and_then(|c| c.with_classes(10))
        .and_then(|c| c.with_dropout(0.0))
        .expect("valid config")
        .with_stem(Stem::SmallInput);
    let model = ModelFile::random(config, 0);
    let init: BTreeMap<String, Tensor> = st
        .names()
        .into_iter()
        .filter_map(|n| {
            n.strip_prefix("init/")
                .map(|k| (k.to_string(), n.to_string()))
        })
        .map(|(k, n)| {
            let (shape, data) = f32s(&st, &n);
            (k, Tensor::new(shape, data))
        })
        .collect();
    assert_eq!(
        init.len(),
        model.tensors().len(),
        "fixture has every tensor of the model"
    );
    let (eps, pre, labels) = (model.bn_epsilon, model.preprocessing, model.labels.clone());
    let model = ModelFile::new(config, eps, pre, labels, init, &path)
        .expect("fixture tensors fit the configuration");

    let (_, images) = f32s(&st, "images");
    let labels: Vec<usize> = st
        .tensor("labels")
        .expect("labels")
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .collect();
    let (_, want_loss) = f32s(&st, "loss");

    let mut net = TrainNet::from_model(&model, 1).expect("trainable");
    let mut grads = net.zero_gradients();
    let options = StepOptions {
        label_smoothing: 0.0,
        bn_decay: 0.9,
        update_bn_stats: true,
        distill: None,
        bn_frozen: false,
        frozen_layers: 0,
    };
    let stats = net.step(&images, &labels, &mut Rng::new(0), &options, &mut grads);
    assert!(
        (stats.loss - want_loss[0]).abs() <= 1e-5 * want_loss[0],
        "loss {} vs TF {}",
        stats.loss,
        want_loss[0]
    );

    for (p, g) in net.params.iter().zip(&grads) {
        let (_, want) = f32s(&st, &format!("grad/{}", p.name));
        assert_close(&format!("grad {}", p.name), g, &want, 1e-3);
    }
    let mut opt = Optimizer::new(OptimizerKind::paper(), 4e-5, &net.params);
    opt.update(&mut net.params, &grads, 0.01);
    for p in &net.params {
        let (_, want) = f32s(&st, &format!("after/{}", p.name));
        assert_close(&format!("after {}", p.name), &p.value, &want, 1e-5);
    }
    for (name, v) in &net.buffers {
        let (_, want) = f32s(&st, &format!("after/{name}"));
        assert_close(&format!("after {name}"), v, &want, 1e-5);
    }
}
