//! Killing a training run mid-epoch (SIGKILL) and resuming it reproduces the uninterrupted run:
//! the same per-epoch metrics, bit for bit (timings aside), and the same final weights.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mobilenet::ModelFile;

mod common;
use common::{interrupt, mobilenet, small_fashion_mnist, wait_for_file};

fn train_args(data: &Path, out: &Path) -> Vec<String> {
    [
        "train",
        "--data",
        data.to_str().expect("utf-8"),
        "--holdout",
        "100",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--threads",
        "2",
        "--show",
        "0",
        "--out",
        out.to_str().expect("utf-8"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// metrics.jsonl without the timing fields.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("json line");
            let o = v.as_object_mut().expect("object");
            o.remove("seconds");
            o.remove("images_per_second");
            v
        })
        .collect()
}

/// Runs the same training twice: once to the end, once interrupted by `interrupt` after the
/// first epoch's checkpoint (during the second epoch) and then resumed; the two must agree.
fn interrupted_then_resumed(name: &str, interrupt: impl FnOnce(std::process::Child)) {
    let root = std::env::temp_dir().join(format!("mobilenet-{name}-{}", std::process::id()));
    let data = root.join("data");
    small_fashion_mnist(&data, 600);
    let (whole, cut): (PathBuf, PathBuf) = (root.join("whole"), root.join("cut"));
    let status = mobilenet()
        .args(train_args(&data, &whole))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert!(status.success(), "uninterrupted run");

    let child = mobilenet()
        .args(train_args(&data, &cut))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_file(
        &cut.join("checkpoint.safetensors"),
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_millis(300));
    interrupt(child);
    let partial = metrics(&cut);
    assert!(
        !partial.is_empty() && partial.len() < 3,
        "interrupted during the run ({} epochs done)",
        partial.len()
    );

    let status = mobilenet()
        .args([
            "train",
            "--data",
            data.to_str().expect("utf-8"),
            "--holdout",
            "100",
            "--show",
            "0",
        ])
        .args(["--resume", cut.to_str().expect("utf-8")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("resume");
    assert!(status.success(), "resumed run");
    assert_eq!(
        metrics(&cut),
        metrics(&whole),
        "resumed metrics equal the uninterrupted run's"
    );
    let a = ModelFile::load(&whole.join("model-last.safetensors")).expect("model");
    let b = ModelFile::load(&cut.join("model-last.safetensors")).expect("model");
    assert!(a == b, "final weights and statistics are identical");
    std::fs::remove_dir_all(&root).expect("clean up");
}

#[test]
fn sigkill_mid_epoch_then_resume_reproduces_the_run() {
    interrupted_then_resumed("sigkill", |mut child| {
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    });
}

#[test]
fn ctrl_c_checkpoints_mid_epoch_and_resume_reproduces_the_run() {
    interrupted_then_resumed("sigint", |child| {
        let out = interrupt(child);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(130),
            "exit code 130 after Ctrl-C: {stderr}"
        );
        assert!(stderr.contains("--resume"), "says how to resume: {stderr}");
    });
}

#[test]
fn a_diverging_run_stops_with_a_clear_message() {
    let root = std::env::temp_dir().join(format!("mobilenet-nan-{}", std::process::id()));
    let data = root.join("data");
    small_fashion_mnist(&data, 200);
    let out = root.join("run");
    let mut args = train_args(&data, &out);
    args.extend(["--lr", "1e38"].map(String::from));
    let result = mobilenet()
        .args(args)
        .stdout(Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "a NaN loss fails the run");
    assert!(stderr.contains("the loss became"), "{stderr}");
    assert!(stderr.contains("last good checkpoint"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&root).expect("clean up");
}

/// `--profile` prints where the steps' time went (shares that add up to the whole, every
/// layer kind of the network) and changes nothing the run computes.
#[test]
fn profile_prints_the_time_per_operation_and_changes_nothing() {
    let root = std::env::temp_dir().join(format!("mobilenet-profile-{}", std::process::id()));
    let data = root.join("data");
    small_fashion_mnist(&data, 300);
    let run = |name: &str, extra: &[&str]| {
        let out = mobilenet()
            .args(train_args(&data, &root.join(name)))
            .args(extra)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plain = run("plain", &[]);
    assert!(!plain.contains("time per operation"), "{plain}");
    let stdout = run("profiled", &["--profile"]);
    // 300 images, 100 held out: 3 epochs of 200 in batches of 16 (13 steps each).
    assert!(
        stdout.contains("time per operation over 39 steps of 600 images"),
        "{stdout}"
    );
    let mut share = 0.0;
    for op in [
        "data wait",
        "stem conv forward",
        "depthwise forward",
        "pointwise forward",
        "batch norm + act forward",
        "pool, classifier, loss",
        "batch norm backward sums",
        "stem conv backward",
        "depthwise backward",
        "pointwise backward",
        "optimiser update",
        "held-out evaluation",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(op))
            .unwrap_or_else(|| panic!("{op} in {stdout}"));
        let percent = line
            .split_whitespace()
            .find(|c| c.ends_with('%'))
            .and_then(|c| c.trim_end_matches('%').parse::<f64>().ok())
            .unwrap_or_else(|| panic!("a share in {line:?}"));
        share += percent;
    }
    // Twelve shares printed to 0.1%: their rounding adds up to at most 0.6.
    assert!(
        (share - 100.0).abs() < 0.7,
        "shares add to {share}: {stdout}"
    );
    assert!(
        stdout.contains("training images/s over the steps"),
        "{stdout}"
    );
    assert_eq!(
        metrics(&root.join("plain")),
        metrics(&root.join("profiled"))
    );
    std::fs::remove_dir_all(&root).expect("clean up");
}
