//! `--precision bf16` as a user meets it: on `bench` and `classify` it runs where the
//! CPU has AVX512-BF16 (probabilities within 0.001 of f32's, the instruction set saying so) and is one
//! clear error line elsewhere, on a quantized model, and with the AVX-512 kernels forced off;
//! `train --precision bf16` says so, keeps it through `--resume`, and is refused the same way.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{json_stdout, mobilenet, small_fashion_mnist};

#[path = "../../mobilenet/tests/common/mod.rs"]
mod shared;

use mobilenet::{MobileNetConfig, ModelFile, Precision};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run(args: &[&str]) -> Output {
    mobilenet().args(args).output().expect("run mobilenet")
}

fn error_line(out: &Output, must_contain: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    for needle in must_contain {
        assert!(stderr.contains(needle), "should name {needle:?}: {stderr}");
    }
}

/// The probabilities of every class of `classify --json` for one image.
fn probabilities(out: Output) -> Vec<f64> {
    let line = json_stdout(out);
    let mut top: Vec<(u64, f64)> = line["top"]
        .as_array()
        .expect("top")
        .iter()
        .map(|p| {
            let class = p["class"].as_u64().expect("class");
            (class, p["probability"].as_f64().expect("p"))
        })
        .collect();
    top.sort_by_key(|t| t.0);
    top.into_iter().map(|t| t.1).collect()
}

#[test]
fn bf16_runs_where_the_cpu_has_it_and_is_a_clear_error_elsewhere() {
    let dir: PathBuf = std::env::temp_dir().join(format!("mobilenet-bf16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let model = dir.join("m.safetensors");
    let config = MobileNetConfig::new(0.5, 64)
        .and_then(|c| c.with_classes(5))
        .expect("config");
    ModelFile::random(config, 9).save(&model).expect("save");
    let photo = dir.join("p.png");
    image::RgbImage::from_fn(80, 70, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 3) as u8, 40])
    })
    .save(&photo)
    .expect("png");
    let (m, p) = (s(&model), s(&photo));
    let bench = run(&[
        "bench",
        "--model",
        m,
        "--runs",
        "2",
        "--warmup",
        "0",
        "--json",
        "--precision",
        "bf16",
    ]);
    if !Precision::Bf16.is_supported() {
        println!("this CPU has no AVX512-BF16: checking the error only");
        error_line(&bench, &["AVX512-BF16", "f32"]);
        error_line(
            &run(&["classify", "--model", m, "--precision", "bf16", p]),
            &["m.safetensors", "AVX512-BF16"],
        );
    } else {
        let isa = json_stdout(bench)["isa"].as_str().expect("isa").to_string();
        assert_eq!(isa, "avx512, bf16 GEMMs");
        let classify = |precision: &str| {
            probabilities(run(&[
                "classify",
                "--model",
                m,
                "--top",
                "5",
                "--json",
                "--precision",
                precision,
                p,
            ]))
        };
        let (f, b) = (classify("f32"), classify("bf16"));
        assert_eq!(f.len(), 5);
        let most = f
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        // Measured on Zen 5: 0.00013 (random weights give near-uniform probabilities, so this
        // checks the plumbing; tf_parity.rs checks the accuracy on Google's weights).
        assert!(most < 0.001 && f != b, "bf16 {b:?} against f32 {f:?}");
        // The AVX-512 kernels forced off: bf16 has no kernel to run with.
        let forced = mobilenet()
            .env("MOBILENET_ISA", "avx2fma")
            .args(["bench", "--model", m, "--runs", "1", "--precision", "bf16"])
            .output()
            .expect("run");
        error_line(&forced, &["avx2fma", "AVX-512"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    // A quantized model runs in int8: bf16 is refused by name, on every CPU.
    let Some(data) = shared::shared_data("bf16_is_refused_for_quantized_models") else {
        return;
    };
    let q = data.join("mobilenet_v1/quant_uint8/mobilenet_v1_0.25_128_quant.tflite");
    for cmd in ["bench", "classify"] {
        let mut args = vec![cmd, "--model", s(&q), "--precision", "bf16"];
        if cmd == "classify" {
            args.push(s(&q));
        }
        error_line(&run(&args), &["quantized", "int8"]);
    }
}

#[test]
fn train_in_bf16_says_so_resumes_in_bf16_and_is_refused_where_it_cannot_run() {
    let root = std::env::temp_dir().join(format!("mobilenet-train-bf16-{}", std::process::id()));
    let data = root.join("data");
    small_fashion_mnist(&data, 200);
    let out = root.join("run");
    let train = |epochs: &str| {
        let mut args = vec!["train", "--epochs", epochs, "--show", "0"];
        if epochs == "1" {
            args.extend(["--data", s(&data), "--holdout", "50", "--batch-size", "16"]);
            args.extend(["--precision", "bf16", "--out", s(&out)]);
        } else {
            args.extend(["--resume", s(&out)]);
        }
        run(&args)
    };
    if !Precision::Bf16.is_supported() {
        error_line(&train("1"), &["bf16 training", "AVX512-BF16"]);
        let _ = std::fs::remove_dir_all(&root);
        return;
    }
    let first = train("1");
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        stdout.contains("precision: bf16 pointwise GEMMs"),
        "{stdout}"
    );
    // The checkpoint keeps the precision: the resumed epoch runs in bf16 too.
    let resumed = train("2");
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        stdout.contains("precision: bf16 pointwise GEMMs"),
        "{stdout}"
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    assert_eq!(metrics.lines().count(), 2);
    // With the AVX-512 kernels forced off there is no bf16 kernel to train with.
    let forced = mobilenet()
        .env("MOBILENET_ISA", "avx2fma")
        .args([
            "train",
            "--data",
            s(&data),
            "--epochs",
            "1",
            "--precision",
            "bf16",
        ])
        .args(["--out", s(&root.join("forced"))])
        .output()
        .expect("run");
    error_line(&forced, &["bf16 training", "AVX-512", "avx2fma"]);
    let _ = std::fs::remove_dir_all(&root);
}
