//! Whole training runs in a group of ranks (threads here, MPI under `mpirun`): two ranks
//! train as one process does on the same global batches (the same weights after two epochs,
//! the same held-out accuracy from evaluation shared between the ranks), rank 0 alone writes the
//! run directory, and a run stopped on two ranks resumes in one process where the two-rank run
//! would have gone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mobilenet::data::{Augment, Dataset};
use mobilenet::train::dist::{Group, ThreadGroup, BUCKET_BYTES};
use mobilenet::train::optim::{OptimizerKind, Schedule};
use mobilenet::train::trainer::{EpochMetrics, Progress, RunEnd, TrainOptions, Trainer};
use mobilenet::weights::ModelFile;
use mobilenet::{MobileNetConfig, Stem};

/// Records the epochs; asks to stop after `stop_after` of them.
struct Record {
    epochs: Vec<EpochMetrics>,
    stop_after: Option<usize>,
}

impl Progress for Record {
    fn step(&mut self, _: usize, _: usize, _: usize, _: f32, _: f32, _: f32) {}
    fn epoch(&mut self, m: &EpochMetrics, _: &[EpochMetrics]) {
        self.epochs.push(m.clone());
    }
    fn stop_requested(&self) -> bool {
        self.stop_after.is_some_and(|n| self.epochs.len() >= n)
    }
}

fn data() -> (Dataset, Dataset) {
    let all = Dataset::builtin_fashion_mnist();
    let train = all.subset(&(0..72).collect::<Vec<_>>());
    (train, all.subset(&(100..131).collect::<Vec<_>>()))
}

fn model() -> ModelFile {
    let config = MobileNetConfig::new(0.25, 32)
        .and_then(|c| c.with_classes(10))
        .and_then(|c| c.with_dropout(0.0))
        .expect("valid")
        .with_stem(Stem::SmallInput);
    ModelFile::random(config, 7)
}

fn options() -> TrainOptions {
    TrainOptions {
        epochs: 2,
        // 72 images: four global batches of 16 and a last one of 8.
        batch_size: 16,
        lr: 1e-4,
        schedule: Schedule::Constant,
        // SGD at a small rate: this random network's batch norm over a few images of 1×1 and
        // 2×2 maps turns rounding differences into percents within a step, and RMSprop's first
        // steps (about the learning rate whatever a gradient's size) make them whole steps.
        optimizer: OptimizerKind::Sgd { momentum: 0.9 },
        weight_decay: 4e-5,
        label_smoothing: 0.0,
        bn_decay: 0.9,
        augment: Augment::None,
        seed: 1,
        threads: 1,
        loader_workers: 1,
        freeze_epochs: 0,
        unfreeze_lr_scale: 1.0,
        patience: None,
        freeze_bn: false,
        distill: None,
        head_lr: None,
        freeze_through: None,
        precision: mobilenet::Precision::F32,
    }
}

/// A fresh directory (tests run in parallel: each call its own).
fn temp(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mobilenet-dp-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `f` on `n` ranks, threads sharing a [`ThreadGroup`] with synchronised batch norm; each
/// rank's result, in rank order.
fn on_ranks<T: Send>(n: usize, f: impl Fn(Group) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = ThreadGroup::new(n)
            .into_iter()
            .map(|g| {
                let f = &f;
                s.spawn(move || {
                    f(Group {
                        collective: Arc::new(g),
                        sync_bn: true,
                        bucket_bytes: BUCKET_BYTES,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rank"))
            .collect()
    })
}

/// A run in `dir` on `ranks` ranks, or (`ranks` 0) one process with `threads` threads; every
/// rank's trainer and the epochs rank 0 saw.
fn run(
    dir: &Path,
    (ranks, threads): (usize, usize),
    stop_after: Option<usize>,
) -> (Vec<Trainer>, Vec<EpochMetrics>) {
    let (train, val) = data();
    if ranks == 0 {
        let o = TrainOptions {
            threads,
            ..options()
        };
        let mut t = Trainer::new(&model(), o, dir).expect("should succeed");
        let mut p = Record {
            epochs: Vec::new(),
            stop_after,
        };
        t.run(&train, &val, &mut p).expect("trains");
        return (vec![t], p.epochs);
    }
    let results = on_ranks(ranks, |group| {
        let mut t = Trainer::new_in(&model(), options(), dir, Some(group)).expect("new");
        let mut p = Record {
            epochs: Vec::new(),
            stop_after,
        };
        t.run(&train, &val, &mut p).expect("trains");
        (t, p.epochs)
    });
    let epochs = results[0].1.clone();
    (results.into_iter().map(|r| r.0).collect(), epochs)
}

fn worst(a: &Trainer, b: &Trainer) -> f32 {
    a.net
        .params
        .iter()
        .zip(&b.net.params)
        .flat_map(|(x, y)| x.value.iter().zip(&y.value).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// How far one process's weights move with the thread count (one thread against two, which
/// split each batch as two ranks do): the rounding noise of this run.
fn thread_noise() -> (f32, Trainer) {
    let (one_dir, two_dir) = (temp("t1"), temp("t2"));
    let (mut one, _) = run(&one_dir, (0, 1), None);
    let (mut two, _) = run(&two_dir, (0, 2), None);
    for dir in [one_dir, two_dir] {
        std::fs::remove_dir_all(dir).expect("should succeed");
    }
    let two = two.remove(0);
    (worst(&one.remove(0), &two), two)
}

#[test]
fn two_ranks_train_as_one_process_and_rank_0_alone_writes() {
    let (one_dir, two_dir) = (temp("one"), temp("two"));
    let (one, one_epochs) = run(&one_dir, (0, 2), None);
    let (two, two_epochs) = run(&two_dir, (2, 1), None);
    let (noise, _) = thread_noise();
    for (r, t) in two.iter().enumerate() {
        let w = worst(t, &one[0]);
        eprintln!(
            "rank {r}: weights {w:.1e} from one process; its thread count moves them {noise:.1e}"
        );
        assert!(
            w <= noise,
            "rank {r}: weights {w:.1e} from one process (noise {noise:.1e})"
        );
        assert_eq!(
            t.net.params, two[0].net.params,
            "rank {r} holds rank 0's weights"
        );
    }
    assert_eq!(two_epochs.len(), 2);
    // The metrics move with that noise too (the loss by about 0.01, two training images
    // between thread counts here); evaluation shared between the ranks counts every held-out
    // image once.
    for (a, b) in two_epochs.iter().zip(&one_epochs) {
        assert!((a.train_loss - b.train_loss).abs() < 0.05, "{a:?} vs {b:?}");
        assert!((a.val_loss - b.val_loss).abs() < 0.05, "{a:?} vs {b:?}");
        assert!(
            (a.train_accuracy - b.train_accuracy).abs() <= 4.0 / 72.0,
            "{a:?} vs {b:?}"
        );
        assert!(
            (a.val_accuracy - b.val_accuracy).abs() <= 2.0 / 31.0,
            "{a:?} vs {b:?}"
        );
        assert!(
            (a.val_accuracy * 31.0)
                .fract()
                .min(1.0 - (a.val_accuracy * 31.0).fract())
                < 1e-3,
            "whole images: {a:?}"
        );
    }
    // The held-out metrics the ranks computed together are one process's on the same model.
    let plan = mobilenet::InferenceModel::new(&two[0].net.to_model()).expect("plans");
    let (_, val) = data();
    let alone = mobilenet::eval::evaluate(&plan, &val, 16, 1, 1).expect("evaluates");
    let last = two_epochs.last().expect("epochs");
    assert_eq!(alone.images, 31);
    assert!(
        (alone.top1 - last.val_accuracy).abs() < 1e-6,
        "{alone:?} vs {last:?}"
    );
    assert!(
        (alone.top5 - last.val_top5).abs() < 1e-6,
        "{alone:?} vs {last:?}"
    );
    assert!(
        (alone.loss - last.val_loss).abs() < 1e-5,
        "{} vs {}",
        alone.loss,
        last.val_loss
    );
    // One set of files, rank 0's: two epochs of metrics.
    let metrics = std::fs::read_to_string(two_dir.join("metrics.jsonl")).expect("written");
    assert_eq!(metrics.lines().count(), 2);
    assert!(two_dir.join("checkpoint.safetensors").is_file());
    let _ = (
        std::fs::remove_dir_all(&one_dir),
        std::fs::remove_dir_all(&two_dir),
    );
}

#[test]
fn a_run_stopped_on_two_ranks_resumes_in_one_process() {
    let (whole_dir, split_dir) = (temp("whole"), temp("split"));
    let (whole, _) = run(&whole_dir, (2, 1), None);
    let (_, first) = run(&split_dir, (2, 1), Some(1));
    assert_eq!(first.len(), 1, "stopped after the first epoch");
    let (train, val) = data();
    let mut resumed = Trainer::resume(&split_dir).expect("resumes");
    let mut p = Record {
        epochs: Vec::new(),
        stop_after: None,
    };
    assert_eq!(
        resumed.run(&train, &val, &mut p).expect("trains"),
        RunEnd::Finished
    );
    let w = worst(&resumed, &whole[0]);
    let (noise, _) = thread_noise();
    assert!(
        w <= noise,
        "resumed weights {w:.1e} from the two-rank run (noise {noise:.1e})"
    );
    let _ = (
        std::fs::remove_dir_all(&whole_dir),
        std::fs::remove_dir_all(&split_dir),
    );
}

#[test]
fn a_run_stopped_in_one_process_resumes_on_two_ranks() {
    let (whole_dir, split_dir) = (temp("whole1"), temp("split1"));
    let (whole, _) = run(&whole_dir, (0, 2), None);
    let (_, first) = run(&split_dir, (0, 2), Some(1));
    assert_eq!(first.len(), 1, "stopped after the first epoch");
    let (train, val) = data();
    let resumed = on_ranks(2, |group| {
        let mut t = Trainer::resume_in(&split_dir, Some(group)).expect("resumes");
        let mut p = Record {
            epochs: Vec::new(),
            stop_after: None,
        };
        assert_eq!(
            t.run(&train, &val, &mut p).expect("trains"),
            RunEnd::Finished
        );
        t
    });
    assert_eq!(
        resumed[0].state.history.len(),
        2,
        "both epochs in the history"
    );
    assert_eq!(resumed[0].net.params, resumed[1].net.params);
    let w = worst(&resumed[0], &whole[0]);
    let (noise, _) = thread_noise();
    assert!(
        w <= noise,
        "resumed weights {w:.1e} from the one-process run (noise {noise:.1e})"
    );
    let _ = (
        std::fs::remove_dir_all(&whole_dir),
        std::fs::remove_dir_all(&split_dir),
    );
}

#[test]
fn a_global_batch_that_does_not_split_evenly_is_refused() {
    let g = ThreadGroup::new(3).remove(0);
    let group = Group {
        collective: Arc::new(g),
        sync_bn: true,
        bucket_bytes: BUCKET_BYTES,
    };
    let mut o = options();
    o.batch_size = 16;
    let err = Trainer::new_in(&model(), o, &temp("odd"), Some(group)).expect_err("16 on 3 ranks");
    assert!(err.to_string().contains("multiple of 3"), "{err}");
}

#[test]
fn a_shard_whose_images_all_fail_to_decode_is_skipped_by_every_rank() {
    // Two classes of four PNGs, one of them not a PNG; batches of 2: one image per rank, so
    // the bad image leaves one rank's shard of its batch empty.
    let root = temp("bad");
    for (class, seed) in [("a", 1u8), ("b", 2)] {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).expect("should succeed");
        for i in 0..4u8 {
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb([(x as u8).wrapping_mul(seed + i), y as u8, seed * 60])
            });
            img.save(dir.join(format!("{i}.png")))
                .expect("should succeed");
        }
    }
    std::fs::write(root.join("a/0.png"), b"not a png").expect("should succeed");
    let data = Dataset::image_folder(&root)
        .expect("should succeed")
        .skipping_bad_images(true);
    let o = TrainOptions {
        epochs: 1,
        batch_size: 2,
        ..options()
    };
    let dir = temp("bad-run");
    let steps = on_ranks(2, |group| {
        let mut t = Trainer::new_in(&model(), o.clone(), &dir, Some(group)).expect("new");
        let mut p = Record {
            epochs: Vec::new(),
            stop_after: None,
        };
        t.run(&data, &data, &mut p)
            .expect("trains past the bad image");
        (t.state.step, p.epochs[0].skipped_images)
    });
    // Four batches, the one with the bad image skipped by both ranks; both count the image
    // once in training and once in evaluation, whichever rank met it.
    assert_eq!(steps, vec![(3, 2), (3, 2)]);
    let _ = (
        std::fs::remove_dir_all(&root),
        std::fs::remove_dir_all(&dir),
    );
}
