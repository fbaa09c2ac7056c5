//! Data-parallel steps over MPI (the `mpi` feature): the test starts itself under
//! `mpirun -np 2 --oversubscribe` and each rank checks, as `train_data_parallel.rs` does with
//! threads, that one step with synchronised batch norm equals one process's on the whole batch
//! within 1e-5 on every parameter, and that both ranks hold the same bits. A rank that leaves
//! or hangs ends the job with a message (Open MPI's, or the survivor's after its timeout)
//! instead of a hang.

#![cfg(feature = "mpi")]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::data_parallel::{batch, model, step, BATCH, RES};
use mobilenet::train::dist::{Collective, Group};
use mobilenet::train::mpi::Mpi;
use mobilenet::train::net::TrainNet;

/// Set in the ranks mpirun starts: which check to run.
const CHILD: &str = "MOBILENET_MPI_TEST";

/// Runs this test binary's test `name` on 2 ranks with `CHILD` = `mode`; its output and
/// whether it succeeded, and how long it took.
fn mpirun(name: &str, mode: &str) -> Option<(bool, String, Duration)> {
    if Command::new("mpirun").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mpirun is not installed (CI=true): .ci/run installs openmpi-bin"
        );
        eprintln!("skipping: mpirun is not installed (openmpi-bin)");
        return None;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let start = Instant::now();
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "-np", "2"])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(CHILD, mode)
        // Containers and CI machines run as root, which Open MPI refuses unless told.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun starts");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text, start.elapsed()))
}

/// A step's parameters and moving statistics, each flattened into one vector.
fn flat_step(net: &mut TrainNet, images: &[f32], labels: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let after = step(net, images, labels);
    (after.params.concat(), after.buffers.concat())
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs() / q.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// One rank: the step on its shard against one process on the whole batch.
fn rank_step() {
    let mpi = Mpi::init(Duration::from_secs(60)).expect("MPI starts");
    let (r, n) = (mpi.rank(), mpi.size());
    assert_eq!(n, 2);
    let (images, labels) = batch();
    let (want_params, want_stats) = flat_step(
        &mut TrainNet::from_model(&model(), 1).expect("should succeed"),
        &images,
        &labels,
    );
    let collective = Arc::new(mpi);
    let px = RES * RES * 3;
    let (a, b) = (r * BATCH / n, (r + 1) * BATCH / n);
    // Gradients in one allreduce after the backward pass, then in buckets of 4 KB: non-blocking
    // allreduces in flight while the pass goes on, among its batch-norm allreduces.
    let runs: Vec<_> = [0, 4096]
        .into_iter()
        .map(|bucket_bytes| {
            let mut net = TrainNet::from_model(&model(), 1).expect("should succeed");
            net.set_group(Some(Group {
                collective: collective.clone(),
                sync_bn: true,
                bucket_bytes,
            }));
            let step = flat_step(&mut net, &images[a * px..b * px], &labels[a..b]);
            (step, net.last_gradient_allreduces())
        })
        .collect();
    let ((params, stats), buckets) = &runs[1];
    println!(
        "rank {r}: gradients in {} and {buckets} allreduces",
        runs[0].1
    );
    assert!(runs[0].1 == 1 && *buckets >= 4, "{} {buckets}", runs[0].1);
    assert_eq!(
        runs[0].0, runs[1].0,
        "rank {r}: buckets sum as one allreduce"
    );
    let (params, stats) = (params.clone(), stats.clone());
    let (p, s) = (worst(&params, &want_params), worst(&stats, &want_stats));
    println!("rank {r}: parameters {p:.1e}, moving statistics {s:.1e} from one process");
    assert!(p <= 1e-5 && s <= 1e-5, "rank {r}: {p:.1e} {s:.1e}");
    // The same bits on both ranks: rank 0's, broadcast, equal ours.
    let mut theirs = params.clone();
    collective.broadcast_f32(&mut theirs);
    assert_eq!(theirs, params, "rank {r} differs from rank 0");
    println!("rank {r}: same parameters as rank 0");
}

/// Rank 1 leaves (`stuck`: hangs for a minute); rank 0 waits in an allreduce, 3 s at most
/// (`started`: in a gradient bucket's, started and then finished).
fn rank_leaves(stuck: bool, started: bool) {
    let mpi = Mpi::init(Duration::from_secs(3)).expect("MPI starts");
    if mpi.rank() == 1 {
        if stuck {
            std::thread::sleep(Duration::from_secs(60));
        }
        std::process::exit(0);
    }
    if started {
        let _ = mpi.start_sum_f32(vec![1.0; 1000]).finish();
    } else {
        let mut v = [1.0f64];
        mpi.sum_f64(&mut v);
    }
    unreachable!("the allreduce cannot complete without rank 1");
}

#[test]
fn two_mpi_ranks_step_as_one_process_with_the_same_bits() {
    match std::env::var(CHILD).as_deref() {
        Ok("step") => return rank_step(),
        Ok(_) => return,
        Err(_) => {}
    }
    let Some((ok, text, _)) = mpirun(
        "two_mpi_ranks_step_as_one_process_with_the_same_bits",
        "step",
    ) else {
        return;
    };
    assert!(ok, "{text}");
    for r in 0..2 {
        assert!(
            text.contains(&format!("rank {r}: same parameters as rank 0")),
            "{text}"
        );
        let buckets = format!("rank {r}: gradients in 1 and ");
        let line = text.lines().find(|l| l.contains(&buckets));
        eprintln!("{}", line.expect("the bucket line"));
    }
}

#[test]
fn a_rank_that_leaves_or_hangs_ends_the_job_with_a_message() {
    let name = "a_rank_that_leaves_or_hangs_ends_the_job_with_a_message";
    match std::env::var(CHILD).as_deref() {
        Ok("leave") => return rank_leaves(false, false),
        Ok("hang") => return rank_leaves(true, false),
        Ok("hang-bucket") => return rank_leaves(true, true),
        Ok(_) => return,
        Err(_) => {}
    }
    // A rank that exits: Open MPI ends the job and says which rank.
    let Some((ok, text, took)) = mpirun(name, "leave") else {
        return;
    };
    assert!(!ok, "the job fails: {text}");
    assert!(
        took < Duration::from_secs(30),
        "ended in {took:?}, not hung"
    );
    assert!(text.contains("process rank 1"), "{text}");
    // A rank that hangs: the other's collective times out, says so and aborts the job.
    let Some((ok, text, took)) = mpirun(name, "hang") else {
        return;
    };
    assert!(!ok, "the job fails: {text}");
    assert!(
        took < Duration::from_secs(30),
        "ended in {took:?}, not hung"
    );
    assert!(
        text.contains("rank 0 of 2: no answer from the other ranks for 3 s in an allreduce"),
        "{text}"
    );
    // The same in a non-blocking allreduce (a gradient bucket's).
    let Some((ok, text, took)) = mpirun(name, "hang-bucket") else {
        return;
    };
    assert!(!ok && took < Duration::from_secs(30), "{took:?}: {text}");
    assert!(
        text.contains("no answer from the other ranks for 3 s in an allreduce (4000 bytes)"),
        "{text}"
    );
}
