//! Training under faults and mistakes: a resume finds the run's own data and refuses changed
//! settings or changed data, Ctrl-C in the first epoch leaves a resumable checkpoint, two runs
//! never share a directory, a split that leaves no images is an error, and `import` never
//! overwrites its input. Every failure is one error line, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::{interrupt, mobilenet, small_fashion_mnist, small_image_folder, wait_for_file};

struct Root(PathBuf);

impl Root {
    fn new(name: &str) -> Root {
        let dir = std::env::temp_dir().join(format!("mobilenet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Root(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `train` on `data` into `out` with small settings, plus `extra` arguments.
fn train(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = mobilenet();
    c.args([
        "train",
        "--data",
        s(data),
        "--holdout",
        "100",
        "--batch-size",
        "16",
    ])
    .args(["--threads", "2", "--show", "0", "--out", s(out)])
    .args(extra);
    c
}

fn resume(dir: &Path, extra: &[&str]) -> Output {
    mobilenet()
        .args(["train", "--resume", s(dir), "--show", "0"])
        .args(extra)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run mobilenet")
}

fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("error: ")),
        "an error line: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr should say {n:?}: {stderr}");
    }
}

fn succeeds(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
}

/// One epoch on `data` into `run`.
fn one_epoch(data: &Path, run: &Path) {
    succeeds(&train(data, run, &["--epochs", "1"]).output().expect("run"));
}

fn epochs_done(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |m| m.lines().count())
}

#[test]
fn resume_without_data_trains_on_the_runs_own_data() {
    let root = Root::new("resume-data");
    let (data, run) = (root.path("data"), root.path("run"));
    small_fashion_mnist(&data, 300);
    one_epoch(&data, &run);
    // The command the program prints after Ctrl-C, from another directory, with one more epoch.
    let out = resume(&run, &["--epochs", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    succeeds(&out);
    let canonical = std::fs::canonicalize(&data).expect("data");
    assert!(
        stdout.contains(&format!("data: {} (100 held out)", canonical.display())),
        "the run's own data, not the built-in set: {stdout}"
    );
    assert_eq!(epochs_done(&run), 2, "the second epoch ran");
}

#[test]
fn resume_refuses_changed_settings_and_changed_data() {
    let root = Root::new("resume-refuse");
    let (data, other, run) = (root.path("data"), root.path("other"), root.path("run"));
    small_fashion_mnist(&data, 300);
    small_fashion_mnist(&other, 300);
    one_epoch(&data, &run);

    fails_with(&resume(&run, &["--lr", "0.5"]), &["--lr cannot change"]);
    fails_with(
        &resume(&run, &["--batch-size", "8"]),
        &["--batch-size cannot change"],
    );
    fails_with(
        &resume(&run, &["--data", s(&other)]),
        &["--data", "differs from the run's"],
    );
    fails_with(
        &resume(&run, &["--holdout", "50"]),
        &["--holdout 50 differs"],
    );
    fails_with(
        &resume(&run, &["--epochs", "1"]),
        &["already finished 1 epochs"],
    );
    // The same data flags as the run's are accepted (older instructions passed them).
    let same = resume(
        &run,
        &["--data", s(&data), "--holdout", "100", "--epochs", "2"],
    );
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );

    // The data changed under the run: one more image.
    small_fashion_mnist(&data, 301);
    fails_with(
        &resume(&run, &["--epochs", "3"]),
        &["data changed since the run started"],
    );
    assert_eq!(epochs_done(&run), 2, "nothing trained on the changed data");
}

#[test]
fn ctrl_c_in_the_first_epoch_leaves_a_resumable_checkpoint() {
    let root = Root::new("first-epoch-sigint");
    let (data, run) = (root.path("data"), root.path("run"));
    small_fashion_mnist(&data, 6000);
    let child = train(&data, &run, &["--epochs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_file(&run.join("run.lock"), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let out = interrupt(child);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(epochs_done(&run), 0, "interrupted inside the first epoch");
    assert!(
        !run.join("run.lock").exists(),
        "the lock is released on exit"
    );
    // The checkpoint resumes.
    succeeds(&resume(&run, &[]));
    assert_eq!(epochs_done(&run), 1);
}

#[test]
fn a_second_run_into_one_directory_fails_at_once() {
    let root = Root::new("two-runs");
    let (data, run) = (root.path("data"), root.path("run"));
    small_fashion_mnist(&data, 6000);
    let mut first = train(&data, &run, &["--epochs", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_file(&run.join("run.lock"), Duration::from_secs(60));
    let second = train(&data, &run, &["--epochs", "1"])
        .output()
        .expect("run");
    let _ = first.kill();
    let _ = first.wait();
    fails_with(&second, &["another run (process", s(&run)]);
    // The killed run's lock is stale: resuming takes it over.
    let again = resume(&run, &["--epochs", "1"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!stderr.contains("another run"), "{stderr}");
}

#[test]
fn a_split_that_leaves_no_images_is_an_error() {
    let root = Root::new("empty-split");
    let data = root.path("data");
    small_fashion_mnist(&data, 500);
    // --holdout 1000 takes every one of 500 images.
    let out = mobilenet()
        .args([
            "train",
            "--data",
            s(&data),
            "--holdout",
            "1000",
            "--out",
            s(&root.path("a")),
            "--show",
            "0",
        ])
        .output()
        .expect("run");
    fails_with(
        &out,
        &["no training images", "500 images", "--holdout 1000"],
    );
    let out = mobilenet()
        .args(["train", "--data", s(&data), "--holdout", "0", "--show", "0"])
        .args(["--out", s(&root.path("b"))])
        .output()
        .expect("run");
    fails_with(&out, &["no held-out images"]);
    // The default holds out 10% of every class, which a small folder can afford.
    let out = mobilenet()
        .args(["train", "--data", s(&data), "--epochs", "1", "--show", "0"])
        .args(["--batch-size", "50", "--out", s(&root.path("c"))])
        .output()
        .expect("run");
    succeeds(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(10% held out)"), "{stdout}");
}

#[test]
fn import_does_not_overwrite_its_input() {
    let root = Root::new("import-self");
    let model = root.path("m.safetensors");
    let config = mobilenet::MobileNetConfig::new(0.25, 32).expect("config");
    mobilenet::ModelFile::random(config, 1)
        .save(&model)
        .expect("save");
    let before = std::fs::read(&model).expect("read");
    let out = mobilenet()
        .args(["import", s(&model), "-o", s(&model)])
        .output()
        .expect("run");
    fails_with(&out, &["names the input file"]);
    // Through another spelling of the same path, too.
    let other = root.path(".").join("m.safetensors");
    let out = mobilenet()
        .args(["import", s(&model), "-o", s(&other)])
        .output()
        .expect("run");
    fails_with(&out, &["names the input file"]);
    assert_eq!(
        std::fs::read(&model).expect("read"),
        before,
        "input untouched"
    );
}

#[test]
fn a_checkpoint_with_a_nan_optimiser_state_is_refused() {
    let root = Root::new("nan-state");
    let (data, run) = (root.path("data"), root.path("run"));
    small_fashion_mnist(&data, 300);
    one_epoch(&data, &run);
    let path = run.join("checkpoint.safetensors");
    let bytes = std::fs::read(&path).expect("checkpoint");
    let (model, mut extra, metadata) =
        mobilenet::ModelFile::from_bytes_with(&bytes, &path, "optimizer/").expect("parses");
    let (name, t) = extra
        .iter_mut()
        .find(|(n, _)| n.starts_with("optimizer/momentum/"))
        .expect("momentum state");
    t.data[0] = f32::NAN;
    let name = name.clone();
    let bytes = model.to_bytes_with(&extra, metadata).expect("serialise");
    std::fs::write(&path, bytes).expect("write");
    fails_with(
        &resume(&run, &["--epochs", "2"]),
        &[&name, "holds NaN or infinite values"],
    );
    assert_eq!(epochs_done(&run), 1, "nothing trained from the bad state");
}

/// `train` on a small image folder: 6 images held out, batches of 8.
fn train_folder(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = mobilenet();
    c.args([
        "train",
        "--data",
        s(data),
        "--holdout",
        "6",
        "--batch-size",
        "8",
    ])
    .args(["--threads", "2", "--show", "0", "--out", s(out)])
    .args(extra);
    c
}

#[test]
fn a_bad_image_stops_the_run_unless_bad_images_are_skipped() {
    let root = Root::new("bad-images");
    let data = root.path("data");
    small_image_folder(&data);
    // A run without bad images, to resume later.
    let clean = root.path("clean");
    succeeds(
        &train_folder(&data, &clean, &["--epochs", "1"])
            .output()
            .expect("run"),
    );
    std::fs::write(
        data.join("ant").join("broken.jpg"),
        b"\xff\xd8\xff\xe0 not a jpeg",
    )
    .expect("write");

    let out = train_folder(&data, &root.path("a"), &["--epochs", "1"])
        .output()
        .expect("run");
    fails_with(&out, &["broken.jpg", "cannot decode", "--skip-bad-images"]);

    let run = root.path("b");
    let out = train_folder(&data, &run, &["--epochs", "2", "--skip-bad-images"])
        .output()
        .expect("run");
    succeeds(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stderr.matches("warning: skipped").count(),
        1,
        "the bad file is named once over two epochs: {stderr}"
    );
    assert!(stderr.contains("broken.jpg"), "{stderr}");
    assert_eq!(stdout.matches("(1 image skipped)").count(), 2, "{stdout}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    assert!(
        metrics.lines().all(|l| l.contains("\"skipped_images\":1")),
        "{metrics}"
    );

    // The flag is part of the run: a run started without it does not take it on resume (its
    // data changed anyway, but the flag is refused first, by name).
    fails_with(
        &resume(&clean, &["--epochs", "2", "--skip-bad-images"]),
        &["--skip-bad-images", "started without it"],
    );

    // eval stops at it, naming the flag; with the flag it names it and counts it.
    let model = run.join("model-best.safetensors");
    let out = mobilenet()
        .args(["eval", "--model", s(&model), "--data", s(&data)])
        .output()
        .expect("eval");
    fails_with(&out, &["broken.jpg", "cannot decode", "--skip-bad-images"]);
    let out = mobilenet()
        .args([
            "eval",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--skip-bad-images",
        ])
        .output()
        .expect("eval");
    succeeds(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("36 images (1 skipped)"));

    // A class folder without images is refused by name.
    std::fs::create_dir_all(data.join("dog")).expect("dir");
    fails_with(
        &train_folder(&data, &root.path("c"), &["--skip-bad-images"])
            .output()
            .expect("run"),
        &["class folder dog holds no"],
    );
}

#[test]
fn resume_names_a_missing_directory_or_checkpoint() {
    let root = Root::new("resume-missing");
    let missing = root.path("no-such-run");
    fails_with(&resume(&missing, &[]), &["no such run directory"]);
    assert!(!missing.exists(), "a mistyped --resume creates nothing");
    let empty = root.path("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    fails_with(&resume(&empty, &[]), &["no checkpoint", "without --resume"]);
}
