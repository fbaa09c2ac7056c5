//! `mobilenet import` of face-api's manifest, then `mobilenet detect` as a user runs it:
//! the JSON lines the issue specifies, drawn PNGs, and clear errors.

use std::path::Path;

mod common;
use common::mobilenet;

#[path = "../../mobilenet/tests/common/mod.rs"]
mod shared;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A fresh folder `name` under the temporary directory, and face-api's detector imported into
/// it as `face.safetensors` (through `mobilenet import`, as a user converts it).
fn imported_face(data: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = std::env::temp_dir().join(format!("mobilenet-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("should succeed");
    let model = root.join("face.safetensors");
    let manifest =
        data.join("detection/ssd_mobilenet_v1_face/ssd_mobilenetv1_model-weights_manifest.json");
    let out = mobilenet()
        .args(["import", s(&manifest), "-o", s(&model)])
        .output()
        .expect("should succeed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (root, model)
}

/// The JSON lines of a successful `detect --json`.
fn json_lines(out: std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("should succeed")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// Detections per image of `detect --json` lines.
fn counts(lines: &[serde_json::Value]) -> Vec<usize> {
    lines
        .iter()
        .map(|l| l["detections"].as_array().expect("should succeed").len())
        .collect()
}

/// The box of a detection.
fn bbox(d: &serde_json::Value) -> Vec<f64> {
    d["box"]
        .as_array()
        .expect("should succeed")
        .iter()
        .map(|v| v.as_f64().expect("should succeed"))
        .collect()
}

#[test]
fn import_then_detect_faces() {
    let Some(data) = shared::shared_data("import_then_detect_faces") else {
        return;
    };
    let (root, model) = imported_face(&data, "detect");

    let face = data.join("images/face.jpg");
    let grace = data.join("images/grace_hopper.png");
    let cat = data.join("images/cat.png");
    let drawn = root.join("drawn");
    let out = mobilenet()
        .args(["detect", "--model", s(&model), "--json", "--threads", "2"])
        .args(["--draw", s(&drawn), s(&face), s(&grace), s(&cat)])
        .output()
        .expect("should succeed");
    let lines = json_lines(out);
    assert_eq!(lines.len(), 3);
    // face-api finds 4 and 1 faces (reference_detections.json); the cat has none.
    assert_eq!(counts(&lines), [4, 1, 0]);
    assert_eq!(lines[1]["image"], s(&grace));
    let d = &lines[1]["detections"][0];
    assert_eq!(d["class"], 1);
    assert_eq!(d["label"], "face");
    let b = bbox(d);
    // face-api: [171.2, 121.6, 180.6, 206.1] in the image's pixels.
    for (got, want) in b.iter().zip([171.2, 121.6, 180.6, 206.1]) {
        assert!((got - want).abs() <= 1.0, "{b:?}");
    }
    // The same faces with bf16 GEMMs, where the CPU has them.
    if mobilenet::Precision::Bf16.is_supported() {
        let out = mobilenet()
            .args([
                "detect",
                "--model",
                s(&model),
                "--json",
                "--precision",
                "bf16",
            ])
            .args([s(&face), s(&grace), s(&cat)])
            .output()
            .expect("should succeed");
        let lines = json_lines(out);
        assert_eq!(counts(&lines), [4, 1, 0]);
        let b = bbox(&lines[1]["detections"][0]);
        for (got, want) in b.iter().zip([171.2, 121.6, 180.6, 206.1]) {
            assert!((got - want).abs() <= 1.5, "bf16: {b:?}");
        }
    }
    // --min-score above every face's score leaves none.
    let out = mobilenet()
        .args([
            "detect",
            "--model",
            s(&model),
            "--json",
            "--min-score",
            "0.9999",
            s(&face),
        ])
        .output()
        .expect("should succeed");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("should succeed");
    assert_eq!(
        line["detections"].as_array().expect("should succeed").len(),
        0
    );
    // The drawn images have the input's size.
    for (name, size) in [("face.png", (512, 355)), ("grace_hopper.png", (512, 600))] {
        let img = image::open(drawn.join(name)).expect("drawn PNG");
        assert_eq!((img.width(), img.height()), size);
    }

    // A detector is not a classifier, and the other way round; a bad image is named and the
    // others still run.
    let out = mobilenet()
        .args(["classify", "--model", s(&model), s(&face)])
        .output()
        .expect("should succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a classifier: run it with `mobilenet detect`"),
        "{err}"
    );
    let classifier = root.join("classifier.safetensors");
    let official = data.join("mobilenet_v1/float/mobilenet_v1_1.0_224_imagenet_float.safetensors");
    assert!(mobilenet()
        .args(["import", s(&official), "-o", s(&classifier)])
        .output()
        .expect("should succeed")
        .status
        .success());
    let out = mobilenet()
        .args(["detect", "--model", s(&classifier), s(&face)])
        .output()
        .expect("should succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a detector"),
        "{err}"
    );
    let broken = root.join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff not really").expect("should succeed");
    let out = mobilenet()
        .args(["detect", "--model", s(&model), s(&broken), s(&grace)])
        .output()
        .expect("should succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad image must fail the run");
    assert!(
        err.contains("broken.jpg") && err.contains("1 of 2"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 object"));
    let out = mobilenet()
        .args(["detect", "--model", s(&model), "--iou", "0", s(&grace)])
        .output()
        .expect("should succeed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--iou 0 is out of range"));
    std::fs::remove_dir_all(&root).ok();
}

/// `quantize` of a detector file, then `detect` and `bench` on the int8 `.tflite`: the same
/// faces as float, and clear errors for what cannot be done.
#[test]
fn quantize_then_detect_faces_in_int8() {
    let Some(data) = shared::shared_data("quantize_then_detect_faces_in_int8") else {
        return;
    };
    let (root, model) = imported_face(&data, "detect-int8");
    let int8 = root.join("face.tflite");
    let out = mobilenet()
        .args(["quantize", "--model", s(&model), "--images", "8"])
        .args(["--calibration", s(&data.join("images")), "-o", s(&int8)])
        .output()
        .expect("should succeed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("int8 detector face") && text.contains("matched"),
        "{text}"
    );
    let face = data.join("images/face.jpg");
    let grace = data.join("images/grace_hopper.png");
    let out = mobilenet()
        .args(["detect", "--model", s(&int8), "--json", s(&face), s(&grace)])
        .output()
        .expect("should succeed");
    let lines = json_lines(out);
    assert_eq!(counts(&lines), [4, 1], "the faces float finds");
    let b = bbox(&lines[1]["detections"][0]);
    // face-api in float: [171.2, 121.6, 180.6, 206.1]; int8 moves edges by a few pixels.
    for (got, want) in b.iter().zip([171.2, 121.6, 180.6, 206.1]) {
        assert!((got - want).abs() <= 8.0, "{b:?}");
    }
    let out = mobilenet()
        .args(["bench", "--model", s(&int8), "--runs", "1", "--warmup", "0"])
        .args(["--threads", "1", "--json"])
        .output()
        .expect("should succeed");
    let bench: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    assert_eq!(bench["precision"], "int8");
    assert_eq!(bench["detector"], "face");
    // An int8 detector is not quantized again, and is no classifier.
    let out = mobilenet()
        .args(["quantize", "--model", s(&int8), "--calibration"])
        .args([s(&data.join("images")), "-o", s(&root.join("again.tflite"))])
        .output()
        .expect("should succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already int8"),
        "{err}"
    );
    let out = mobilenet()
        .args(["classify", "--model", s(&int8), s(&face)])
        .output()
        .expect("should succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mobilenet detect"),
        "{err}"
    );
    // bf16 is for float detectors; the int8 one refuses it by name.
    let out = mobilenet()
        .args([
            "detect",
            "--model",
            s(&int8),
            "--precision",
            "bf16",
            s(&face),
        ])
        .output()
        .expect("should succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("face.tflite") && err.contains("int8 detector"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// `eval-detect` on the face images with face-api's boxes as ground truth: every face found
/// at IoU 0.5 (AP50 = 1), the results file in COCO's format, and a missing image or a
/// malformed annotation named.
#[test]
fn eval_detect_on_faces() {
    let Some(data) = shared::shared_data("eval_detect_on_faces") else {
        return;
    };
    let (root, model) = imported_face(&data, "eval-detect");
    let text = std::fs::read_to_string(
        data.join("detection/ssd_mobilenet_v1_face/reference_detections.json"),
    )
    .expect("should succeed");
    let reference: serde_json::Value = serde_json::from_str(&text).expect("should succeed");
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    for (i, (path, faces)) in reference["images"]
        .as_object()
        .expect("should succeed")
        .iter()
        .enumerate()
    {
        let img = image::open(data.join(path)).expect("should succeed");
        images.push(serde_json::json!({"id": i + 1, "file_name": path,
            "width": img.width(), "height": img.height()}));
        for face in faces.as_array().expect("should succeed") {
            let id = annotations.len() + 1;
            annotations.push(serde_json::json!({"id": id, "image_id": i + 1,
                "category_id": 1, "bbox": face["box"], "iscrowd": 0}));
        }
    }
    let gt = serde_json::json!({"images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "face"}]});
    let ann = root.join("faces.json");
    std::fs::write(&ann, gt.to_string()).expect("should succeed");
    let results = root.join("results.json");
    let out = mobilenet()
        .args(["eval-detect", "--model", s(&model), "--data", s(&data)])
        .args(["--annotations", s(&ann), "--json", "--results", s(&results)])
        .output()
        .expect("should succeed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("should succeed");
    assert_eq!(report["ap50"], 1.0, "{report}");
    assert!(
        report["ap"].as_f64().expect("should succeed") > 0.5,
        "{report}"
    );
    let written: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&results).expect("should succeed"))
            .expect("should succeed");
    assert_eq!(
        written.len(),
        report["detections"].as_u64().expect("should succeed") as usize
    );
    assert!(
        written
            .iter()
            .all(|r| r["category_id"] == 1
                && r["bbox"].as_array().expect("should succeed").len() == 4)
    );

    // A missing image and a box outside its image are named.
    let failure = |broken: serde_json::Value| {
        std::fs::write(&ann, broken.to_string()).expect("should succeed");
        let out = mobilenet()
            .args(["eval-detect", "--model", s(&model), "--data", s(&data)])
            .args(["--annotations", s(&ann)])
            .output()
            .expect("should succeed");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let mut gt_missing = gt.clone();
    gt_missing["images"][0]["file_name"] = "images/nope.jpg".into();
    let err = failure(gt_missing);
    assert!(err.contains("nope.jpg"), "{err}");
    let mut gt_outside = gt.clone();
    gt_outside["annotations"][0]["bbox"] = serde_json::json!([5000, 0, 10, 10]);
    let err = failure(gt_outside);
    assert!(
        err.contains("faces.json: annotations[0] (id 1): bbox [5000.0"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// `train-detect` from Google's ImageNet weights on a few COCO128 images at 96×96: the run
/// directory's files, one metrics line per epoch, the curves, resuming for more epochs, and
/// clear errors for a classifier's labels mismatch and missing arguments.
#[test]
fn train_detect_writes_a_run_and_resumes() {
    let Some(data) = shared::shared_data("train_detect_writes_a_run_and_resumes") else {
        return;
    };
    let root = std::env::temp_dir().join(format!("mobilenet-train-detect-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("should succeed");
    // The first 4 images of COCO128 and their objects.
    let coco: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("detection/coco128/instances_coco128.json"))
            .expect("should succeed"),
    )
    .expect("should succeed");
    let images: Vec<serde_json::Value> =
        coco["images"].as_array().expect("should succeed")[..4].to_vec();
    let ids: Vec<u64> = images
        .iter()
        .map(|i| i["id"].as_u64().expect("should succeed"))
        .collect();
    let annotations: Vec<serde_json::Value> = coco["annotations"]
        .as_array()
        .expect("should succeed")
        .iter()
        .filter(|a| ids.contains(&a["image_id"].as_u64().expect("should succeed")))
        .cloned()
        .collect();
    let small = serde_json::json!({"images": images, "annotations": annotations,
        "categories": coco["categories"]});
    let ann = root.join("small.json");
    std::fs::write(&ann, small.to_string()).expect("should succeed");
    let official = data.join("mobilenet_v1/float/mobilenet_v1_1.0_224_imagenet_float.safetensors");
    let images_dir = data.join("detection/coco128/images");
    let out_dir = root.join("run");
    let train = |extra: &[&str]| {
        mobilenet()
            .args([
                "train-detect",
                "--data",
                s(&images_dir),
                "--annotations",
                s(&ann),
            ])
            .args(["--batch-size", "2", "--threads", "2"])
            .args(extra)
            .output()
            .expect("should succeed")
    };
    let out = train(&[
        "--init",
        s(&official),
        "--input",
        "96",
        "--epochs",
        "2",
        "--out",
        s(&out_dir),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("epoch   2") && text.contains("mAP"), "{text}");
    for file in [
        "checkpoint.safetensors",
        "detector.safetensors",
        "curves.png",
    ] {
        assert!(out_dir.join(file).exists(), "{file} missing");
    }
    let lines = |dir: &Path| {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .expect("should succeed")
            .lines()
            .count()
    };
    assert_eq!(lines(&out_dir), 2);
    let curves = image::open(out_dir.join("curves.png")).expect("should succeed");
    assert_eq!((curves.width(), curves.height()), (1200, 480));
    // The trained detector runs in `detect`.
    let detector = out_dir.join("detector.safetensors");
    let run = mobilenet()
        .args([
            "detect",
            "--model",
            s(&detector),
            "--json",
            s(&images_dir.join("000000000009.jpg")),
        ])
        .output()
        .expect("should succeed");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Resume: a finished run adds nothing; --epochs sets a new total.
    let out = train(&["--resume", s(&out_dir)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out_dir), 2, "a finished run resumes to nothing new");
    let out = train(&["--resume", s(&out_dir), "--epochs", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out_dir), 3);
    // No starting point is an error that names the options.
    let out = train(&["--out", s(&root.join("x"))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--init"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}
