//! The whole network's training step: finite-difference gradients through every layer, the
//! same step on every instruction set and thread count, and the models it refuses.

use mobilenet::train::net::{StepOptions, TrainError, TrainNet};
use mobilenet::train::Rng;
use mobilenet::{MobileNetConfig, ModelFile, Padding, Stem, Variant};
use mobilenet_kernels::Isa;

mod common;

/// α 0.25 at 64×64: the last maps are 2×2, so with a batch of 4 every batch norm sees at
/// least 16 values per channel (with fewer it is too ill-conditioned for finite differences).
fn tiny(stem: Stem, padding: Padding) -> ModelFile {
    let config = MobileNetConfig::new(0.25, 64)
        .and_then(|c| c.with_classes(4))
        .and_then(|c| c.with_dropout(0.0))
        .expect("valid config")
        .with_stem(stem)
        .with_padding(padding);
    let mut model = ModelFile::random(config, 5);
    // Non-trivial batch-norm parameters, so that their gradients are exercised.
    let mut rng = Rng::new(9);
    for (name, data) in model.tensor_values_mut() {
        if name.ends_with("gamma") {
            data.iter_mut().for_each(|v| *v = 1.0 + 0.2 * rng.normal());
        } else if name.ends_with("beta") {
            data.iter_mut().for_each(|v| *v = 0.2 + 0.2 * rng.normal());
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

/// Central differences of `loss_of` against `grads` at eight coordinates of each parameter
/// named in `names` (ones only kink-free ops follow).
fn check_coordinates(
    net: &mut TrainNet,
    names: &[&str],
    grads: &[Vec<f32>],
    loss_of: impl Fn(&mut TrainNet) -> f64,
) {
    for name in names {
        let pi = (0..net.params.len())
            .find(|&p| net.params[p].name == *name)
            .unwrap_or_else(|| panic!("no parameter {name}"));
        let len = net.params[pi].value.len();
        for i in (0..len).step_by((len / 8).max(1)) {
            let orig = net.params[pi].value[i];
            // The loss comes back as f32 (ulp 2.4e-7 near 2.3): steps below ~1e-3 would
            // make the difference quotient mostly rounding noise for small gradients.
            let eps = 5e-3 * orig.abs().max(0.2);
            net.params[pi].value[i] = orig + eps;
            let up = loss_of(net);
            net.params[pi].value[i] = orig - eps;
            let down = loss_of(net);
            net.params[pi].value[i] = orig;
            let numeric = (up - down) / (2.0 * eps as f64);
            let analytic = grads[pi][i] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-2 * numeric.abs().max(analytic.abs()) + 2e-4,
                "{name}[{i}]: numeric {numeric}, analytic {analytic}"
            );
        }
    }
}

/// Finite differences of the step's loss against the analytic gradient.
///
/// ReLU6 makes the loss piecewise smooth: a perturbation of an early weight moves thousands
/// of units, some across a kink, so single coordinates of early layers are unreliable. The
/// check is therefore (a) coordinate-wise on the classifier and the last block, which only
/// kink-free ops follow, and (b) along the gradient's own direction for all parameters at
/// once, where the crossings average out: `(L(θ + εĝ) − L(θ − εĝ)) / 2ε ≈ |g|`.
fn gradient_check(stem: Stem, padding: Padding, threads: usize) {
    gradient_check_with(stem, padding, threads, false);
}

/// As [`gradient_check`]; `bn_frozen`: batch norm normalises with the moving statistics.
fn gradient_check_with(stem: Stem, padding: Padding, threads: usize, bn_frozen: bool) {
    let model = tiny(stem, padding);
    let mut net = TrainNet::from_model(&model, threads).expect("trainable");
    let res = model.config.resolution();
    let (images, labels) = batch(res, 4, 1);
    let options = StepOptions {
        update_bn_stats: false,
        bn_frozen,
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
    check_coordinates(&mut net, &tail, &grads, loss_of);

    common::check_directional_derivative(&mut net, &grads, loss_of);
}

/// Frozen batch norm through the whole network: the same checks.
#[test]
fn network_gradients_with_frozen_batch_norm() {
    gradient_check_with(Stem::Standard, Padding::TfSame, 2, true);
}

/// Freezing the layers through a name: the layers above get exactly the gradients of the
/// whole network's step (batch norm frozen in both, so the forward passes agree), and the
/// frozen ones are not written at all.
#[test]
fn a_frozen_prefix_stops_the_backward_pass() {
    let model = tiny(Stem::Standard, Padding::TfSame);
    let net = TrainNet::from_model(&model, 1).expect("trainable");
    // The stem, then a depthwise and a pointwise layer per block.
    assert_eq!(net.layers_through("conv_0"), Ok(1));
    assert_eq!(net.layers_through("conv_1/depthwise"), Ok(2));
    assert_eq!(net.layers_through("conv_1"), Ok(3));
    assert_eq!(net.layers_through("conv_13"), Ok(27));
    for bad in ["conv_14", "fc", "conv_1/", "avgpool"] {
        let err = net.layers_through(bad).unwrap_err();
        assert!(err.contains("conv_0 … conv_13"), "{bad}: {err}");
    }
    let (images, labels) = batch(model.config.resolution(), 4, 5);
    let step = |frozen_layers: usize| {
        let mut net = TrainNet::from_model(&model, 1).expect("trainable");
        let options = StepOptions {
            bn_frozen: true,
            frozen_layers,
            ..StepOptions::default()
        };
        let mut grads: Vec<Vec<f32>> = net
            .zero_gradients()
            .into_iter()
            .map(|g| vec![f32::NAN; g.len()])
            .collect();
        let stats = net.step(&images, &labels, &mut Rng::new(0), &options, &mut grads);
        (stats.loss, grads, net.first_param_of_layer(frozen_layers))
    };
    let (loss, whole, _) = step(0);
    assert!(whole.iter().flatten().all(|g| g.is_finite()));
    let k = net.layers_through("conv_6").expect("a block");
    let (frozen_loss, part, first) = step(k);
    assert_eq!(loss, frozen_loss);
    assert_eq!(first, 3 * k);
    for (i, (a, b)) in whole.iter().zip(&part).enumerate() {
        let name = &net.params[i].name;
        if i < first {
            assert!(b.iter().all(|g| g.is_nan()), "{name}: frozen, not written");
        } else {
            assert_eq!(a, b, "{name}");
        }
    }
}

#[test]
fn network_gradients_match_finite_differences() {
    gradient_check(Stem::Standard, Padding::TfSame, 1);
}

#[test]
fn network_gradients_small_stem_symmetric_padding_two_threads() {
    gradient_check(Stem::SmallInput, Padding::Symmetric, 2);
}

#[test]
fn every_isa_and_thread_count_gives_the_same_step() {
    let model = tiny(Stem::Standard, Padding::TfSame);
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

/// A distilled step: the mixed loss's gradient matches finite differences on the classifier
/// and the last block, and a teacher weight of 0 gives exactly the plain step.
#[test]
fn distilled_step_gradients() {
    use mobilenet::train::net::Distill;
    let model = tiny(Stem::Standard, Padding::TfSame);
    let mut net = TrainNet::from_model(&model, 1).expect("trainable");
    let res = model.config.resolution();
    let (images, labels) = batch(res, 4, 2);
    let mut rng = Rng::new(4);
    let mut soft: Vec<f32> = (0..4 * 4).map(|_| rng.uniform() + 0.05).collect();
    for row in soft.chunks_exact_mut(4) {
        let s: f32 = row.iter().sum();
        row.iter_mut().for_each(|p| *p /= s);
    }
    let plain = StepOptions {
        update_bn_stats: false,
        ..StepOptions::default()
    };
    let with = |weight: f32| StepOptions {
        distill: Some(Distill {
            weight,
            temperature: 3.0,
        }),
        ..plain
    };
    let mut a = net.zero_gradients();
    let mut b = net.zero_gradients();
    let sa = net.step(&images, &labels, &mut Rng::new(0), &plain, &mut a);
    let sb = net.step_distilled(
        &images,
        &labels,
        &soft,
        &mut Rng::new(0),
        &with(0.0),
        &mut b,
    );
    assert_eq!((sa, &a), (sb, &b), "weight 0 is the plain step");

    let options = with(0.7);
    let step = |net: &mut TrainNet, grads: &mut [Vec<f32>]| {
        let rng = &mut Rng::new(0);
        net.step_distilled(&images, &labels, &soft, rng, &options, grads)
            .loss as f64
    };
    let mut grads = net.zero_gradients();
    step(&mut net, &mut grads);
    let loss_of = |net: &mut TrainNet| step(net, &mut net.zero_gradients());
    let names = ["fc/weight", "fc/bias", "conv_13/pointwise/bn/gamma"];
    check_coordinates(&mut net, &names, &grads, loss_of);
}
