//! Values that used to be accepted and give wrong or empty answers: each is now one error line
//! naming the value (or, for too many threads, a note and a capped count). No panics.

use std::path::{Path, PathBuf};
use std::process::Output;

use mobilenet::{MobileNetConfig, ModelFile};

mod common;
use common::{mobilenet, small_fashion_mnist};

fn run(args: &[&str]) -> Output {
    mobilenet().args(args).output().expect("run mobilenet")
}

fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr should say {n:?}: {stderr}");
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mobilenet-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn training_options_out_of_range_are_refused() {
    let root = temp("options");
    let data = root.join("data");
    small_fashion_mnist(&data, 200);
    for (flag, value, says) in [
        ("--lr", "-1", "learning rate -1 must be positive"),
        ("--bn-decay", "2", "batch-norm decay 2 must be in [0, 1)"),
        (
            "--label-smoothing",
            "5",
            "label smoothing 5 must be in [0, 1)",
        ),
        ("--epochs", "0", "epochs 0 must be at least 1"),
        ("--momentum", "1.5", "momentum 1.5 must be in [0, 1)"),
        ("--mpi-timeout", "0", "--mpi-timeout 0 is out of range"),
        (
            "--allreduce-bucket-mb",
            "-1",
            "--allreduce-bucket-mb -1 is out of range",
        ),
    ] {
        let out = run(&[
            "train",
            "--data",
            s(&data),
            "--holdout",
            "50",
            "--show",
            "0",
            "--out",
            s(&root.join(flag.trim_start_matches('-'))),
            &format!("{flag}={value}"),
        ]);
        fails_with(&out, &[says]);
    }
    std::fs::remove_dir_all(&root).expect("clean up");
}

#[test]
fn one_class_and_out_of_range_labels_are_refused() {
    let root = temp("classes");
    let folder = root.join("one").join("only-cats");
    std::fs::create_dir_all(&folder).expect("class folder");
    for i in 0..4u8 {
        image::RgbImage::from_pixel(8, 8, image::Rgb([i * 40, 10, 10]))
            .save(folder.join(format!("{i}.png")))
            .expect("png");
    }
    let out = run(&[
        "train",
        "--data",
        s(&root.join("one")),
        "--holdout",
        "1",
        "--show",
        "0",
        "--out",
        s(&root.join("run")),
    ]);
    fails_with(&out, &["one class", "at least two"]);

    // An IDX label file whose image 3 has label 200.
    let data = root.join("idx");
    small_fashion_mnist(&data, 10);
    let labels = data.join("small-labels-idx1-ubyte");
    let mut bytes = std::fs::read(&labels).expect("labels");
    bytes[8 + 3] = 200;
    std::fs::write(&labels, bytes).expect("labels");
    let out = run(&[
        "train",
        "--data",
        s(&data),
        "--holdout",
        "2",
        "--out",
        s(&root.join("r2")),
    ]);
    fails_with(&out, &["label 200 of image 3 is not a class"]);
    std::fs::remove_dir_all(&root).expect("clean up");
}

#[test]
fn models_that_would_answer_nonsense_are_refused() {
    let root = temp("models");
    let config = MobileNetConfig::new(0.25, 32)
        .and_then(|c| c.with_classes(3))
        .expect("config");
    let img = root.join("x.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([1, 2, 3]))
        .save(&img)
        .expect("png");

    // A negative batch-norm variance: refused at load, naming the tensor.
    let mut m = ModelFile::random(config, 1);
    for (name, values) in m.tensor_values_mut() {
        if name == "conv_1/depthwise/bn/moving_variance" {
            values[2] = -0.5;
        }
    }
    let path = root.join("negative-variance.safetensors");
    m.save(&path).expect("save");
    fails_with(
        &run(&["classify", "--model", s(&path), s(&img)]),
        &["conv_1/depthwise/bn/moving_variance", "negative variance"],
    );

    // Classifier weights that overflow f32: no "NaN%", an error.
    let mut m = ModelFile::random(config, 2);
    for (name, values) in m.tensor_values_mut() {
        // Every feature the classifier sees is 5 (ReLU6 of a β of 5)…
        if name == "conv_13/pointwise/bn/beta" {
            values.iter_mut().for_each(|v| *v = 5.0);
        }
        if name == "fc/weight" {
            // …so class 0's logit overflows to +∞ and the others' to −∞ ([cin, classes]).
            for (i, v) in values.iter_mut().enumerate() {
                *v = if i % 3 == 0 { 3e38 } else { -3e38 };
            }
        }
    }
    let path = root.join("overflow.safetensors");
    m.save(&path).expect("save");
    let out = run(&["classify", "--model", s(&path), s(&img)]);
    fails_with(&out, &["non-finite probabilities"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("NaN"));

    let good = root.join("good.safetensors");
    ModelFile::random(config, 3).save(&good).expect("save");
    fails_with(
        &run(&["classify", "--model", s(&good), "--top", "0", s(&img)]),
        &["--top 0"],
    );
    fails_with(
        &run(&["arch", "--classes", "18446744073709551615"]),
        &["number of classes 18446744073709551615 is invalid"],
    );
    std::fs::remove_dir_all(&root).expect("clean up");
}

#[test]
fn more_threads_than_cores_are_capped_with_a_note() {
    let out = run(&[
        "bench",
        "--preset",
        "0.25_128",
        "--threads",
        "100000",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("note: --threads 100000 is more than the"),
        "{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    assert_eq!(json["threads"].as_u64(), Some(cores as u64));
}

/// CRC-32 (IEEE) of a PNG chunk's type and data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG file of a few dozen bytes claiming `side`² pixels.
fn png_header(side: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // The start of a zlib stream: the decoder would inflate it to side² · 3 bytes.
    let idat = [b'I', b'D', b'A', b'T', 0x78, 0x9C];
    png.extend_from_slice(&2u32.to_be_bytes());
    png.extend_from_slice(&idat);
    png.extend_from_slice(&crc32(&idat).to_be_bytes());
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    png
}

#[test]
fn cut_off_huge_and_non_regular_inputs_are_refused() {
    let root = temp("inputs");
    let model = root.join("m.safetensors");
    let config = MobileNetConfig::new(0.25, 32)
        .and_then(|c| c.with_classes(3))
        .expect("config");
    ModelFile::random(config, 1).save(&model).expect("save");

    // A JPEG cut in half decodes "successfully" to grey: refused by name.
    let jpeg = root.join("photo.jpg");
    image::RgbImage::from_fn(256, 256, |x, y| {
        image::Rgb([(x ^ y) as u8, (x * y % 251) as u8, (x + 3 * y) as u8])
    })
    .save(&jpeg)
    .expect("jpeg");
    let ok = run(&["classify", "--model", s(&model), s(&jpeg)]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bytes = std::fs::read(&jpeg).expect("jpeg");
    let cut = root.join("cut.jpg");
    // Cut inside the scan (the headers are the first few hundred bytes).
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 4]).expect("cut");
    fails_with(
        &run(&["classify", "--model", s(&model), s(&cut)]),
        &["cut.jpg", "truncated JPEG"],
    );

    // A 59-byte PNG claiming 16384² pixels: refused before anything is allocated.
    let bomb = root.join("bomb.png");
    std::fs::write(&bomb, png_header(16384)).expect("png");
    fails_with(
        &run(&["classify", "--model", s(&model), s(&bomb)]),
        &["bomb.png", "16384×16384", "megapixels"],
    );
    // The limit is a flag: lowered, an ordinary photo is refused; raised, the bomb gets past
    // the size check and fails as the header-only file it is.
    fails_with(
        &run(&[
            "classify",
            "--model",
            s(&model),
            "--max-image-pixels",
            "1000",
            s(&jpeg),
        ]),
        &[
            "photo.jpg",
            "256×256 is 65536 pixels",
            "up to 1000 pixels",
            "--max-image-pixels",
        ],
    );
    let raised = run(&[
        "classify",
        "--model",
        s(&model),
        "--max-image-pixels",
        "300000000",
        s(&bomb),
    ]);
    fails_with(&raised, &["bomb.png"]);
    assert!(!String::from_utf8_lossy(&raised.stderr).contains("megapixels"));

    // A device and a directory are not files to read (a FIFO hung, /dev/zero read until
    // memory ran out).
    if Path::new("/dev/zero").exists() {
        fails_with(
            &run(&["classify", "--model", "/dev/zero", s(&jpeg)]),
            &["/dev/zero", "not a regular file"],
        );
        fails_with(
            &run(&["classify", "--model", s(&model), "/dev/zero"]),
            &["/dev/zero", "not a regular file"],
        );
    }
    fails_with(
        &run(&["classify", "--model", s(&root), s(&jpeg)]),
        &["a directory"],
    );
    let fifo = root.join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        fails_with(
            &run(&["classify", "--model", s(&model), s(&fifo)]),
            &["fifo", "not a regular file"],
        );
    }
    std::fs::remove_dir_all(&root).expect("clean up");
}

#[test]
fn jobs_too_large_for_the_memory_are_refused_with_the_numbers() {
    // 1.0-224 at batch 100,000 needs about 600 GB of activations: refused before allocating.
    let out = run(&[
        "bench", "--preset", "1.0_224", "--batch", "100000", "--runs", "1",
    ]);
    if mobilenet::memory::available().is_some() {
        fails_with(
            &out,
            &["a batch of 100000", "MB of memory", "MB are available"],
        );
    }
    // Training at 4096×4096 (about 1 TB for a batch of 64).
    let root = temp("memory");
    let data = root.join("data");
    small_fashion_mnist(&data, 120);
    let out = run(&[
        "train",
        "--data",
        s(&data),
        "--holdout",
        "20",
        "--resolution",
        "4096",
        "--out",
        s(&root.join("run")),
    ]);
    if mobilenet::memory::available().is_some() {
        fails_with(
            &out,
            &[
                "training MobileNet v1",
                "on batches of 64",
                "MB are available",
            ],
        );
    }
    fails_with(
        &run(&["bench", "--runs", "18446744073709551615"]),
        &["not in 1..=1000000"],
    );
    std::fs::remove_dir_all(&root).expect("clean up");
}
