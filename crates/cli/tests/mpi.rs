//! `mobilenet train` under `mpirun -np 2` (the `mpi` feature), as a user runs it: rank 0 alone
//! prints and writes the run directory, and the run resumes in one process.

#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::Command;

use common::{mobilenet, small_fashion_mnist};

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn two_ranks_train_with_rank_0_speaking_and_the_run_resumes_alone() {
    if Command::new("mpirun").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mpirun is not installed (CI=true): .ci/run installs openmpi-bin"
        );
        eprintln!("skipping: mpirun is not installed (openmpi-bin)");
        return;
    }
    let root = std::env::temp_dir().join(format!("mobilenet-mpi-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (data, run) = (root.join("data"), root.join("run"));
    small_fashion_mnist(&data, 160);
    let args = [
        "train",
        "--data",
        s(&data),
        "--holdout",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--show",
        "0",
        "--out",
        s(&run),
    ];
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_mobilenet"))
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun starts");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{text}\n{err}");
    // One voice: rank 0's.
    assert_eq!(
        text.matches("2 ranks over MPI, synchronised batch norm")
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("done: best held-out accuracy").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("in buckets of 1.00 MB during the backward pass"),
        "{text}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("rank 0 wrote it");
    assert_eq!(metrics.lines().count(), 2);
    // The two-rank run goes on in one process.
    let out = mobilenet()
        .args(["train", "--resume", s(&run), "--epochs", "3", "--show", "0"])
        .output()
        .expect("should succeed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("resuming"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("written");
    assert_eq!(metrics.lines().count(), 3);
    // A global batch that does not split among the ranks is refused on every rank.
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_mobilenet"))
        .args(["train", "--data", s(&data), "--batch-size", "15", "--out"])
        .arg(root.join("odd"))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun starts");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("--batch-size 15 is the global batch"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
