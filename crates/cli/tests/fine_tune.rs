//! Fine-tuning from pretrained weights as a new user does it: `--init` with Google's official
//! ImageNet file and no α or resolution flags takes the network from the file.

use std::path::Path;

mod common;
use common::{mobilenet, small_image_folder};

#[path = "../../mobilenet/tests/common/mod.rs"]
mod shared;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `train` on `folder` into `out`: 6 images held out, batches of 8, plus `extra`.
fn train_on(folder: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    mobilenet()
        .args([
            "train",
            "--data",
            s(folder),
            "--holdout",
            "6",
            "--batch-size",
            "8",
        ])
        .args(["--show", "0", "--threads", "2", "--out", s(out)])
        .args(extra)
        .output()
        .expect("run")
}

/// The standard output of a run that must have succeeded (its standard error otherwise).
fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn init_takes_the_network_from_the_official_file() {
    let Some(data) = shared::shared_data("init_takes_the_network_from_the_official_file") else {
        return;
    };
    let official = data.join("mobilenet_v1/float/mobilenet_v1_1.0_224_imagenet_float.safetensors");
    let root = std::env::temp_dir().join(format!("mobilenet-fine-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let folder = root.join("photos");
    small_image_folder(&folder);
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec!["--init", s(&official)];
        args.extend_from_slice(extra);
        train_on(&folder, &root.join(out), &args)
    };

    // A flag that contradicts the file is refused before anything trains.
    let out = train("a", &["--alpha", "0.5", "--epochs", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--alpha 0.5 contradicts") && stderr.contains("alpha 1"),
        "{stderr}"
    );

    // α, stem, padding and preprocessing come from the file; a smaller resolution is allowed
    // (and said) to keep the test quick.
    let out = train("b", &["--resolution", "64", "--epochs", "1"]);
    let stdout = ok(&out);
    assert!(
        stdout.contains("1.0_224") && stdout.contains("new 3-class classifier"),
        "{stdout}"
    );
    assert!(stdout.contains("fine-tuning at 64×64"), "{stdout}");
    let model = mobilenet::ModelFile::load(&root.join("b/model-last.safetensors")).expect("model");
    let (official, _) =
        mobilenet::import::import(&official, &Default::default()).expect("official");
    assert_eq!(model.config.alpha(), 1.0);
    assert_eq!(model.config.resolution(), 64);
    assert_eq!(model.config.classes(), Some(3));
    assert_eq!(model.config.stem(), official.config.stem());
    assert_eq!(model.config.padding(), official.config.padding());
    assert_eq!(model.preprocessing, official.preprocessing);
    assert_eq!(
        model.labels.as_deref(),
        Some(&["ant", "bee", "cat"].map(String::from)[..])
    );

    // The new user's command: --init and nothing about the network; a frozen backbone (a
    // linear probe at the file's 224×224) keeps every pretrained tensor as it was.
    let out = train("c", &["--freeze", "backbone", "--epochs", "2"]);
    let stdout = ok(&out);
    assert!(stdout.contains("backbone frozen"), "{stdout}");
    let probe = mobilenet::ModelFile::load(&root.join("c/model-last.safetensors")).expect("model");
    assert_eq!(probe.config.resolution(), 224);
    for (name, tensor) in probe.tensors() {
        if !name.starts_with("fc/") {
            assert_eq!(Some(tensor), official.tensor(name), "{name} is frozen");
        }
    }

    // Two stages in one command: the classifier first, then the whole network.
    let out = train(
        "d",
        &[
            "--freeze-epochs",
            "1",
            "--epochs",
            "2",
            "--resolution",
            "64",
        ],
    );
    let stdout = ok(&out);
    assert!(
        stdout.contains("backbone frozen for the first 1 epoch"),
        "{stdout}"
    );
    let tuned = mobilenet::ModelFile::load(&root.join("d/model-last.safetensors")).expect("model");
    assert_ne!(
        tuned.tensor("conv_1/depthwise/weight"),
        official.tensor("conv_1/depthwise/weight")
    );

    // Keras's guide: Adam, then the layers after a named block (fine_tune_at); the layers
    // through it keep their weights and statistics. A name the network lacks is refused.
    let keras = [
        "--freeze-epochs",
        "1",
        "--epochs",
        "2",
        "--resolution",
        "64",
    ];
    let out = train("e", &[&keras[..], &["--freeze", "conv_99"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("conv_0 … conv_13"),
        "{stderr}"
    );
    assert!(!root.join("e").exists(), "nothing made for a refused run");
    let recipe = ["--optimizer", "adam", "--lr", "0.001", "--freeze", "conv_9"];
    let out = train("f", &[&keras[..], &recipe[..]].concat());
    let stdout = ok(&out);
    assert!(
        stdout.contains("Adam (β₁ 0.9, β₂ 0.999, ε 1e-7)")
            && stdout.contains("then the layers after conv_9"),
        "{stdout}"
    );
    // The kept epoch is named: the best held-out accuracy, equal ones by the lower loss.
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(root.join("f/metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let key = |m: &serde_json::Value| {
        let f = |k: &str| m[k].as_f64().expect("number");
        (f("val_accuracy"), -f("val_loss"))
    };
    let best = metrics
        .iter()
        .reduce(|b, m| if key(m) > key(b) { m } else { b })
        .expect("epochs");
    let said = format!("% (epoch {}) →", best["epoch"]);
    assert!(stdout.contains(&said), "{said} in {stdout}");
    let partial =
        mobilenet::ModelFile::load(&root.join("f/model-last.safetensors")).expect("model");
    for (name, tensor) in partial.tensors() {
        let block: usize = name[5..]
            .split(['/', '_'])
            .next()
            .and_then(|b| b.parse().ok())
            .unwrap_or(usize::MAX);
        let fixed = name.starts_with("conv_") && block <= 9;
        let same = Some(tensor) == official.tensor(name);
        assert_eq!(same, fixed, "{name}");
    }
    std::fs::remove_dir_all(&root).expect("clean up");
}

/// `--teacher` distils from an f32 model and from a quantized `.tflite` of it; a teacher with
/// other classes is refused by name; on resume the teacher cannot change.
#[test]
fn distillation_from_f32_and_int8_teachers() {
    let root = std::env::temp_dir().join(format!("mobilenet-distil-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let folder = root.join("photos");
    small_image_folder(&folder);
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec!["--epochs", "1"];
        args.extend_from_slice(extra);
        train_on(&folder, &root.join(out), &args)
    };
    ok(&train("teacher", &["--alpha", "0.5"]));
    let teacher = root.join("teacher/model-best.safetensors");
    let int8 = root.join("teacher.tflite");
    ok(&mobilenet()
        .args(["quantize", "--model", s(&teacher), "--calibration"])
        .args([s(&folder.join("ant")), "-o", s(&int8)])
        .output()
        .expect("quantize"));
    for (run, t) in [("f32", &teacher), ("int8", &int8)] {
        let stdout = ok(&train(run, &["--teacher", s(t), "--temperature", "2"]));
        assert!(
            stdout.contains("distilling from") && stdout.contains("temperature 2"),
            "{stdout}"
        );
        assert!(root.join(run).join("model-best.safetensors").exists());
    }
    let out = mobilenet()
        .args(["train", "--resume", s(&root.join("f32")), "--epochs", "2"])
        .args(["--teacher", s(&int8), "--show", "0"])
        .output()
        .expect("resume");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--teacher cannot change"));

    let five = root.join("five.safetensors");
    let config = mobilenet::MobileNetConfig::new(0.25, 32)
        .and_then(|c| c.with_classes(5))
        .expect("config");
    mobilenet::ModelFile::random(config, 1)
        .save(&five)
        .expect("save");
    let out = train("wrong", &["--teacher", s(&five)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the teacher has 5 classes, the student 3"),
        "{stderr}"
    );
    assert!(
        !root.join("wrong").exists(),
        "refused before the run directory is made"
    );
    std::fs::remove_dir_all(&root).expect("clean up");
}
