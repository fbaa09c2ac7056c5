//! Mixed-precision training (`TrainOptions::precision`, `TrainNet::set_precision`): a bf16 step
//! is the f32 step within bf16's rounding, and a bf16 run learns what the f32 run learns. The
//! pointwise GEMMs themselves are checked against their rounded definition in the kernels
//! crate; here the whole step and run. Skipped (with the reason printed) on CPUs without
//! AVX512-BF16, where the refusal is checked instead.

use mobilenet::data::{Augment, Dataset};
use mobilenet::train::net::{StepOptions, TrainNet};
use mobilenet::train::optim::{OptimizerKind, Schedule};
use mobilenet::train::trainer::{EpochMetrics, Progress, TrainOptions, Trainer};
use mobilenet::train::Rng;
use mobilenet::{MobileNetConfig, ModelFile, Precision, Stem};
use mobilenet_kernels::{Isa, IsaKind};

/// A network whose pointwise layers are wide enough (α 0.5: 16 to 512 channels) for bf16's
/// rounding to average out as it does in real layers, at 32×32 with the small-input stem.
fn model() -> ModelFile {
    let config = MobileNetConfig::new(0.5, 32)
        .and_then(|c| c.with_classes(10))
        .and_then(|c| c.with_dropout(0.0))
        .expect("valid")
        .with_stem(Stem::SmallInput);
    ModelFile::random(config, 4)
}

/// One step of `net` on a fixed batch of 16: the loss and the gradients.
fn step(net: &mut TrainNet) -> (f32, Vec<Vec<f32>>) {
    let mut rng = Rng::new(8);
    let images: Vec<f32> = (0..16 * 32 * 32 * 3).map(|_| rng.normal()).collect();
    let labels: Vec<usize> = (0..16).map(|i| i % 10).collect();
    let mut grads = net.zero_gradients();
    let stats = net.step(
        &images,
        &labels,
        &mut Rng::new(3),
        &StepOptions::default(),
        &mut grads,
    );
    (stats.loss, grads)
}

fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    diff.sqrt() / norm.sqrt().max(1e-30)
}

/// Cosine of the angle between two whole gradients (all tensors in one vector).
fn cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        (ab, aa, bb) = (ab + x * y, aa + x * x, bb + y * y);
    }
    ab / (aa * bb).sqrt()
}

/// ReLU networks' gradients are discontinuous (a unit that crosses a kink switches its whole
/// contribution), and at random initialisation a MobileNet is so close to many kinks that
/// changing every pointwise weight by a relative 2⁻¹⁰ in f32 moves single gradient tensors by
/// 50–130% of their norm: tensor-by-tensor closeness is not a test of bf16 there. What is:
/// the loss; the direction of the whole gradient against f32's sensitivity to noise of
/// bf16's size (every pointwise weight times `1 + 2⁻⁸·N(0, 1)`: bf16 rounds each operand by
/// up to 2⁻⁹, activations and gradients too); that the pointwise weight gradients are not
/// f32's; and f32 again after bf16, bit for bit.
#[test]
fn a_bf16_step_is_the_f32_step_within_bf16_rounding() {
    let model = model();
    let mut net = TrainNet::from_model(&model, 2).expect("trainable");
    if !Precision::Bf16.is_supported() {
        let err = net.set_precision(Precision::Bf16).expect_err("refused");
        assert!(err.to_string().contains("AVX512-BF16"), "{err}");
        println!("skipped: this CPU has no AVX512-BF16 (the refusal checked)");
        return;
    }
    let (loss32, g32) = step(&mut net);
    net.set_precision(Precision::Bf16).expect("should succeed");
    assert_eq!(net.precision(), Precision::Bf16);
    let (loss16, g16) = step(&mut net);
    net.set_precision(Precision::F32).expect("should succeed");
    let (again, g) = step(&mut net);
    assert_eq!((again, &g), (loss32, &g32), "f32 again, bit for bit");
    // The f32 sensitivity: every pointwise weight times (1 + 2⁻⁸·N(0, 1)).
    let mut rng = Rng::new(77);
    for p in net
        .params
        .iter_mut()
        .filter(|p| p.name.ends_with("pointwise/weight"))
    {
        p.value
            .iter_mut()
            .for_each(|v| *v *= 1.0 + rng.normal() / 256.0);
    }
    let (loss_moved, g_moved) = step(&mut net);
    let (c16, c_moved) = (cosine(&g16, &g32), cosine(&g_moved, &g32));
    println!(
        "loss f32 {loss32}, bf16 {loss16}, f32 moved {loss_moved}; gradient cosine to f32's: \
         bf16 {c16:.4}, f32 moved {c_moved:.4}"
    );
    // Measured: 1.2% (f32 with the noise: 0.4%).
    assert!(
        ((loss16 - loss32) / loss32).abs() < 0.025,
        "loss {loss16} vs {loss32}"
    );
    // Measured: bf16 0.660; f32 with that noise 0.533 (0.755 at 2⁻⁹, 0.857 at 2⁻¹⁰).
    assert!(
        c16 >= c_moved,
        "bf16's gradient at cosine {c16} to f32's, f32 with 2⁻⁸ noise at {c_moved}"
    );
    let pointwise: Vec<usize> = (0..net.params.len())
        .filter(|&i| net.params[i].name.ends_with("pointwise/weight"))
        .collect();
    assert_eq!(pointwise.len(), 13);
    for &i in &pointwise {
        let d = relative_l2(&g16[i], &g32[i]);
        assert!(
            d > 1e-4,
            "{}: bf16 gave f32's gradient ({d})",
            net.params[i].name
        );
    }
}

#[test]
fn bf16_is_refused_off_avx512() {
    // Scalar is always there; the GEMMs' bf16 form is AVX-512's.
    let scalar = Isa::of_kind(IsaKind::Scalar).expect("should succeed");
    let mut net = TrainNet::from_model(&model(), 1).expect("trainable");
    net.set_isa(scalar);
    let err = net.set_precision(Precision::Bf16).expect_err("refused");
    assert!(err.to_string().contains("bf16 training"), "{err}");
    assert_eq!(net.precision(), Precision::F32);
}

struct Quiet;

impl Progress for Quiet {
    fn step(&mut self, _: usize, _: usize, _: usize, _: f32, _: f32, _: f32) {}
    fn epoch(&mut self, _: &EpochMetrics, _: &[EpochMetrics]) {}
}

/// Three epochs on 2,000 Fashion-MNIST images, α 0.25 at 32×32: the held-out accuracy of the
/// bf16 run against the f32 run's, same seed and data.
#[test]
fn a_bf16_run_learns_what_the_f32_run_learns() {
    if !Precision::Bf16.is_supported() {
        println!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let all = Dataset::builtin_fashion_mnist();
    let train = all.subset(&(0..2000).collect::<Vec<_>>());
    let val = all.subset(&(8000..9000).collect::<Vec<_>>());
    let config = MobileNetConfig::new(0.25, 32)
        .and_then(|c| c.with_classes(10))
        .expect("valid")
        .with_stem(Stem::SmallInput);
    let mut model = ModelFile::random(config, 3);
    model.preprocessing.crop = 1.0;
    let mut accuracy = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        let options = TrainOptions {
            epochs: 3,
            batch_size: 32,
            lr: 0.05,
            schedule: Schedule::Cosine { warmup_epochs: 0.5 },
            optimizer: OptimizerKind::paper(),
            weight_decay: 4e-5,
            label_smoothing: 0.0,
            bn_decay: 0.9,
            augment: Augment::None,
            seed: 1,
            threads: 2,
            loader_workers: 2,
            freeze_epochs: 0,
            unfreeze_lr_scale: 1.0,
            patience: None,
            freeze_bn: false,
            distill: None,
            head_lr: None,
            freeze_through: None,
            precision,
        };
        let dir = std::env::temp_dir().join(format!(
            "mobilenet-bf16-run-{precision}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut trainer = Trainer::new(&model, options, &dir).expect("trainer");
        assert_eq!(trainer.net.precision(), precision);
        trainer
            .run(&train, &val, &mut Quiet)
            .expect("training runs");
        accuracy.push(trainer.state.history[2].val_accuracy);
        drop(trainer);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
    println!(
        "held-out accuracy: f32 {:.4}, bf16 {:.4}",
        accuracy[0], accuracy[1]
    );
    // Measured on Zen 5: f32 0.766, bf16 0.771. The f32 run must learn (6× chance); the two
    // may differ by 30 of the 1,000 held-out images: ±2.3 standard errors of an accuracy
    // near 0.77 measured on 1,000 images (√(0.77·0.23/1000) = 0.013).
    assert!(accuracy[0] > 0.6, "the f32 run learns: {}", accuracy[0]);
    assert!(
        (accuracy[1] - accuracy[0]).abs() <= 0.03,
        "bf16 {} vs f32 {}",
        accuracy[1],
        accuracy[0]
    );
}
