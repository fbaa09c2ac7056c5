//! Bad input to `import`, `classify` and `bench`: one line on stderr naming the file and what is
//! wrong, a non-zero exit, no panic. Uses small random-weight models written by the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mobilenet::{MobileNetConfig, ModelFile};

fn mobilenet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mobilenet"))
        .args(args)
        .output()
        .expect("run mobilenet")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("mobilenet-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tiny_model(path: &Path) {
    let config = MobileNetConfig::new(0.25, 32)
        .and_then(|c| c.with_classes(3))
        .expect("valid config");
    let mut model = ModelFile::random(config, 3);
    model.labels = Some(vec!["red".into(), "green".into(), "blue".into()]);
    model.save(path).expect("save model");
}

fn png(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 99]))
        .save(path)
        .expect("save png");
}

fn one_error_line(out: &Output, must_contain: &[&str]) {
    assert!(!out.status.success(), "should fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert!(!lines.is_empty(), "no error line: {stderr}");
    for needle in must_contain {
        assert!(
            stderr.contains(needle),
            "stderr should name {needle:?}: {stderr}"
        );
    }
}

#[test]
fn classify_reports_bad_images_and_classifies_the_rest() {
    let dir = TempDir::new("classify");
    let model = dir.path("m.safetensors");
    tiny_model(&model);
    let good = dir.path("good.png");
    png(&good, 40, 30);
    let empty = dir.path("empty.jpg");
    std::fs::write(&empty, b"").expect("write");
    let text = dir.path("notes.png");
    std::fs::write(&text, b"this is not an image").expect("write");
    let gray = dir.path("gray.png");
    image::GrayImage::from_pixel(32, 32, image::Luma([200]))
        .save(&gray)
        .expect("gray");
    let out = mobilenet(&[
        "classify",
        "--model",
        model.to_str().expect("utf-8"),
        good.to_str().expect("utf-8"),
        empty.to_str().expect("utf-8"),
        text.to_str().expect("utf-8"),
        gray.to_str().expect("utf-8"),
        "missing.png",
        "--json",
    ]);
    one_error_line(
        &out,
        &["empty.jpg", "notes.png", "missing.png", "3 of 5 images"],
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "the two decodable images are classified: {stdout}"
    );
    assert!(lines[0]["image"]
        .as_str()
        .expect("image")
        .ends_with("good.png"));
    let top = lines[0]["top"].as_array().expect("top");
    assert_eq!(top.len(), 3, "top-5 of a 3-class model is 3 entries");
    let sum: f64 = top
        .iter()
        .map(|p| p["probability"].as_f64().expect("p"))
        .sum();
    assert!(
        (sum - 1.0).abs() < 1e-5,
        "probabilities of all classes sum to 1: {sum}"
    );
    assert!(["red", "green", "blue"].contains(&top[0]["label"].as_str().expect("label")));
}

#[test]
fn corrupt_and_truncated_model_files_are_named() {
    let dir = TempDir::new("model");
    let model = dir.path("m.safetensors");
    tiny_model(&model);
    let bytes = std::fs::read(&model).expect("read");
    let img = dir.path("x.png");
    png(&img, 32, 32);
    let truncated = dir.path("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let garbage = dir.path("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnope").expect("write");
    for (path, what) in [
        (truncated.as_path(), "not a valid safetensors file"),
        (garbage.as_path(), "not a valid safetensors file"),
        (Path::new("no-such-model.safetensors"), "No such file"),
    ] {
        let out = mobilenet(&[
            "classify",
            "--model",
            path.to_str().expect("utf-8"),
            img.to_str().expect("utf-8"),
        ]);
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        one_error_line(&out, &[name, what]);
        let out = mobilenet(&[
            "bench",
            "--model",
            path.to_str().expect("utf-8"),
            "--runs",
            "1",
        ]);
        one_error_line(&out, &[name, what]);
    }
}

#[test]
fn import_errors_name_the_file() {
    let dir = TempDir::new("import");
    let model = dir.path("m.safetensors");
    tiny_model(&model);
    let out_path = dir.path("out.safetensors");
    let out = mobilenet(&[
        "import",
        model.to_str().expect("utf-8"),
        "-o",
        out_path.to_str().expect("utf-8"),
        "--labels",
        "no-such-labels.txt",
    ]);
    one_error_line(&out, &["no-such-labels.txt"]);
    assert!(!out_path.exists(), "nothing written on error");

    let wrong_labels = dir.path("labels.txt");
    std::fs::write(&wrong_labels, "one\ntwo\n").expect("write");
    let out = mobilenet(&[
        "import",
        model.to_str().expect("utf-8"),
        "-o",
        out_path.to_str().expect("utf-8"),
        "--labels",
        wrong_labels.to_str().expect("utf-8"),
    ]);
    one_error_line(&out, &["2 labels for 3 classes"]);

    let empty = dir.path("empty.safetensors");
    std::fs::write(&empty, b"").expect("write");
    let out = mobilenet(&[
        "import",
        empty.to_str().expect("utf-8"),
        "-o",
        out_path.to_str().expect("utf-8"),
    ]);
    one_error_line(&out, &["empty.safetensors"]);

    // A native file imports as itself.
    let out = mobilenet(&[
        "import",
        model.to_str().expect("utf-8"),
        "-o",
        out_path.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ModelFile::load(&out_path).expect("load"),
        ModelFile::load(&model).expect("load")
    );
}

#[test]
fn classify_with_crop_one_and_text_output() {
    let dir = TempDir::new("text");
    let model = dir.path("m.safetensors");
    tiny_model(&model);
    let img = dir.path("x.png");
    png(&img, 32, 32);
    let out = mobilenet(&[
        "classify",
        "--model",
        model.to_str().expect("utf-8"),
        img.to_str().expect("utf-8"),
        "--crop",
        "1.0",
        "--top",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(text.lines().count(), 3, "{text}");
    let out = mobilenet(&[
        "classify",
        "--model",
        model.to_str().expect("utf-8"),
        img.to_str().expect("utf-8"),
        "--crop",
        "0",
    ]);
    one_error_line(&out, &["--crop 0"]);
}

/// `quantize` end to end on a tiny model and a folder of images, then the int8 file through
/// `classify` (labels from its metadata), `bench` (int8 next to f32) and `eval`; and its bad
/// inputs: a missing calibration folder, a folder without images, a truncated .tflite; XNNPACK's
/// requantization is taken by the int8 file and refused by the float one.
#[test]
fn quantize_then_classify_bench_and_eval_the_int8_file() {
    let dir = TempDir::new("quantize");
    let model = dir.path("m.safetensors");
    tiny_model(&model);
    let images = dir.path("images");
    for (c, name) in ["red", "green", "blue"].iter().enumerate() {
        std::fs::create_dir_all(images.join(name)).expect("class dir");
        for i in 0..4 {
            png(
                &images.join(name).join(format!("{i}.png")),
                32 + 4 * i + c as u32,
                32,
            );
        }
    }
    let q = dir.path("m_int8.tflite");
    let (m, i, qs) = (
        model.to_str().expect("utf-8"),
        images.to_str().expect("utf-8"),
        q.to_str().expect("utf-8"),
    );
    let out = mobilenet(&[
        "quantize",
        "--model",
        m,
        "--calibration",
        i,
        "--images",
        "8",
        "-o",
        qs,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("calibrated on 8 image(s)"), "{stdout}");
    let photo = images.join("green/1.png");
    let out = mobilenet(&[
        "classify",
        "--model",
        qs,
        "--top",
        "3",
        "--json",
        photo.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let top = line["top"].as_array().expect("top");
    assert_eq!(top.len(), 3);
    let total: f64 = top
        .iter()
        .map(|p| p["probability"].as_f64().expect("p"))
        .sum();
    assert!(
        (total - 1.0).abs() < 0.02,
        "probabilities of all 3 classes sum to {total}"
    );
    assert!(["red", "green", "blue"].contains(&top[0]["label"].as_str().expect("label")));
    let out = mobilenet(&[
        "bench", "--model", qs, "--runs", "3", "--warmup", "1", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    assert_eq!(b["precision"], "int8");
    assert!(
        b["median_ms"].as_f64().expect("ms") > 0.0
            && b["f32_median_ms"].as_f64().expect("ms") > 0.0
    );
    let out = mobilenet(&["eval", "--model", qs, "--data", i, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval JSON");
    assert_eq!(e["images"], 12);
    // XNNPACK's requantization: named in the bench's instruction set; the float model refuses it.
    let out = mobilenet(&[
        "bench",
        "--model",
        qs,
        "--runs",
        "3",
        "--warmup",
        "1",
        "--json",
        "--requant",
        "xnnpack",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    let isa = b["isa"].as_str().expect("isa");
    assert!(isa.ends_with(", xnnpack requantization"), "{isa}");
    let out = mobilenet(&["eval", "--model", qs, "--data", i, "--requant", "xnnpack"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    one_error_line(
        &mobilenet(&[
            "classify",
            "--model",
            m,
            "--requant",
            "xnnpack",
            photo.to_str().expect("utf-8"),
        ]),
        &["m.safetensors", "float model", "quantized .tflite"],
    );

    let missing = dir.path("nowhere");
    one_error_line(
        &mobilenet(&[
            "quantize",
            "--model",
            m,
            "--calibration",
            missing.to_str().expect("utf-8"),
            "-o",
            qs,
        ]),
        &["nowhere"],
    );
    let empty = dir.path("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    one_error_line(
        &mobilenet(&[
            "quantize",
            "--model",
            m,
            "--calibration",
            empty.to_str().expect("utf-8"),
            "-o",
            qs,
        ]),
        &["empty", "no images"],
    );
    let bytes = std::fs::read(&q).expect("int8 file");
    let cut = dir.path("cut.tflite");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    one_error_line(
        &mobilenet(&[
            "classify",
            "--model",
            cut.to_str().expect("utf-8"),
            photo.to_str().expect("utf-8"),
        ]),
        &["cut.tflite"],
    );
}

/// Folders are searched recursively (hidden entries and non-image files skipped, sorted by
/// path); `--csv` gives a header and one row per image with the file name first; the CSV
/// agrees with the JSON output; `--top` beyond the class count is capped.
#[test]
fn classify_takes_folders_and_writes_csv() {
    let dir = TempDir::new("folders");
    let model = dir.path("m.safetensors");
    tiny_model(&model);
    let root = dir.path("photos");
    for (sub, name) in [
        ("b", "2.png"),
        ("a", "1.png"),
        ("a/deep", "3.png"),
        (".hidden", "4.png"),
    ] {
        std::fs::create_dir_all(root.join(sub)).expect("dir");
        image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10]))
            .save(root.join(sub).join(name))
            .expect("png");
    }
    std::fs::write(root.join("a").join("notes.txt"), "not an image").expect("txt");
    let (m, r) = (
        model.to_str().expect("utf-8"),
        root.to_str().expect("utf-8"),
    );
    let csv = mobilenet(&["classify", "--model", m, r, "--csv", "--top", "9"]);
    assert!(
        csv.status.success(),
        "{}",
        String::from_utf8_lossy(&csv.stderr)
    );
    let csv = String::from_utf8(csv.stdout).expect("utf-8");
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "image",
            "label_1",
            "probability_1",
            "label_2",
            "probability_2",
            "label_3",
            "probability_3"
        ]
    );
    let names: Vec<&str> = rows[1..].iter().map(|r| r[0]).collect();
    assert_eq!(names.len(), 3, "{csv}");
    assert!(
        names[0].ends_with("a/1.png")
            && names[1].ends_with("a/deep/3.png")
            && names[2].ends_with("b/2.png"),
        "{names:?}"
    );
    let json = mobilenet(&["classify", "--model", m, r, "--json"]);
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&json.stdout)
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    let top = &first["top"][0];
    assert_eq!(rows[1][1], top["label"].as_str().expect("label"));
    let p: f64 = rows[1][2].parse().expect("probability");
    assert!((p - top["probability"].as_f64().expect("p")).abs() < 1e-6);

    let empty = dir.path("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let out = mobilenet(&["classify", "--model", m, empty.to_str().expect("utf-8")]);
    one_error_line(&out, &["empty", "holds no JPEG"]);
}

/// `eval --confusion-png` draws the matrix with its colour scale (the scale's top is the
/// darkest shade); `--normalize` needs the PNG; the title fits a 3-class picture.
#[test]
fn eval_draws_a_confusion_matrix_with_a_scale() {
    let dir = TempDir::new("confusion");
    let model = dir.path("m.safetensors");
    tiny_model(&model);
    let data = dir.path("data");
    for (class, rgb) in [
        ("blue", [0, 0, 250]),
        ("green", [0, 250, 0]),
        ("red", [250, 0, 0]),
    ] {
        std::fs::create_dir_all(data.join(class)).expect("dir");
        for i in 0..4u8 {
            image::RgbImage::from_pixel(8, 8, image::Rgb(rgb.map(|v: u8| v.saturating_sub(i))))
                .save(data.join(class).join(format!("{i}.png")))
                .expect("png");
        }
    }
    let png = dir.path("cm.png");
    let (m, d, p) = (
        model.to_str().expect("utf-8"),
        data.to_str().expect("utf-8"),
        png.to_str().expect("utf-8"),
    );
    let out = mobilenet(&[
        "eval",
        "--model",
        m,
        "--data",
        d,
        "--confusion-png",
        p,
        "--normalize",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&png).expect("a PNG").to_rgb8();
    assert!(img.width() >= 700, "room for the title: {}", img.width());
    let darkest = img.pixels().filter(|px| px.0 == [8, 48, 107]).count();
    assert!(darkest > 0, "the scale's top shade is drawn");
    let out = mobilenet(&["eval", "--model", m, "--data", d, "--normalize"]);
    assert!(
        !out.status.success(),
        "--normalize without a PNG is refused"
    );
}
