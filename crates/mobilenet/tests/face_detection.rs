//! face-api's SSD-MobileNet v1 face detector, imported from its TF.js manifest, against the
//! detections face-api 1.7.15 computed on TensorFlow.js
//! (`../shared/data/detection/ssd_mobilenet_v1_face/reference_detections.json`): the same
//! faces, boxes within 1 pixel, scores within 1e-3.
//!
//! The reference decoded its images with PIL (libjpeg-turbo). A PNG decodes to the same pixels
//! everywhere; a JPEG does not: our decoder (`image`'s zune-jpeg) gives face.jpg values up to
//! 4 levels away on 16% of its pixels, which moves the weakest face's score by 2e-3 (with
//! PIL's pixels fed in, all four scores match to the reference's 4 decimals and the boxes to
//! 0.1 pixel; checked while writing this test). So JPEG scores get 3e-3.

mod common;

use std::path::Path;

use mobilenet::detect::tfjs::import_face_api;
use mobilenet::detect::{generate_anchors, Detector, DetectorFile};
use mobilenet::preprocess::load_image;
use mobilenet_kernels::Isa;

const BOX_TOLERANCE_PX: f64 = 1.0;
const SCORE_TOLERANCE: f32 = 1e-3;
/// For JPEG inputs: the decoders differ (see above).
const JPEG_SCORE_TOLERANCE: f32 = 3e-3;

fn face_dir(data: &Path) -> std::path::PathBuf {
    data.join("detection/ssd_mobilenet_v1_face")
}

fn import(data: &Path) -> DetectorFile {
    import_face_api(&face_dir(data).join("ssd_mobilenetv1_model-weights_manifest.json"))
        .expect("import face-api's manifest")
}

#[test]
fn face_api_detections_match_for_every_isa() {
    let Some(data) = common::shared_data("face_api_detections_match") else {
        return;
    };
    let file = import(&data);
    // The file round-trips through safetensors unchanged.
    let bytes = file.to_bytes().expect("serialise");
    let file = DetectorFile::from_bytes(&bytes, Path::new("face.safetensors")).expect("read");
    let text = std::fs::read_to_string(face_dir(&data).join("reference_detections.json"))
        .expect("reference detections");
    let reference: serde_json::Value = serde_json::from_str(&text).expect("json");
    let images = reference["images"].as_object().expect("images");
    assert!(images.len() >= 2);
    for isa in Isa::available() {
        let detector = Detector::with_isa(&file, isa).expect("plan");
        let mut session = detector.session(2);
        for (image, want) in images {
            let img = load_image(&data.join(image)).expect("image");
            let (found, frame) = session.detect(&img, None);
            let want = want.as_array().expect("detections");
            let tolerance = if image.ends_with(".png") {
                SCORE_TOLERANCE
            } else {
                JPEG_SCORE_TOLERANCE
            };
            let got: Vec<(f32, [f64; 4])> = found
                .iter()
                .map(|d| (d.score, frame.to_pixels(d.bbox)))
                .collect();
            assert_eq!(got.len(), want.len(), "{isa:?} {image}: {got:?}");
            for (g, w) in got.iter().zip(want) {
                let score = w["score"].as_f64().expect("should succeed") as f32;
                let bbox: Vec<f64> = w["box"]
                    .as_array()
                    .expect("should succeed")
                    .iter()
                    .map(|v| v.as_f64().expect("should succeed"))
                    .collect();
                // The reference is rounded to 4 decimals (scores) and 0.1 pixel (boxes).
                assert!(
                    (g.0 - score).abs() <= tolerance + 5e-5,
                    "{isa:?} {image}: score {} vs {score}",
                    g.0
                );
                for k in 0..4 {
                    assert!(
                        (g.1[k] - bbox[k]).abs() <= BOX_TOLERANCE_PX + 0.05,
                        "{isa:?} {image}: box {:?} vs {bbox:?}",
                        g.1
                    );
                }
            }
        }
    }
}

/// The anchors stored in face-api's graph are the multiple-grid generator's for its
/// configuration (the import checks this too, and refuses a graph whose anchors differ).
#[test]
fn face_api_anchors_are_the_generators() {
    let Some(data) = common::shared_data("face_api_anchors") else {
        return;
    };
    let manifest = face_dir(&data).join("ssd_mobilenetv1_model-weights_manifest.json");
    let tensors = mobilenet::detect::tfjs::read_manifest(&manifest).expect("manifest");
    let stored = &tensors["Output/extra_dim"];
    assert_eq!(stored.shape, [1, 5118, 4]);
    let file = import(&data);
    let grids = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)];
    let ours = generate_anchors(&file.config.anchors, &grids);
    assert_eq!(ours.len(), 5118);
    for (i, (a, b)) in stored.data.chunks_exact(4).zip(&ours).enumerate() {
        for k in 0..4 {
            assert!((a[k] - b[k]).abs() < 1e-5, "anchor {i}: {a:?} vs {b:?}");
        }
    }
}

/// The detector with bf16 GEMMs (8 significant bits) finds face-api's faces: the same count,
/// boxes within 1 pixel, scores within 0.01 (measured: 0.25 px, 0.0027; the f32 engine is held
/// to 1 pixel and 1e-3).
#[test]
fn face_api_detections_hold_in_bf16() {
    let Some(data) = common::shared_data("face_api_detections_hold_in_bf16") else {
        return;
    };
    if !mobilenet::Precision::Bf16.is_supported() {
        println!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let mut detector = Detector::new(&import(&data)).expect("plan");
    detector
        .set_precision(mobilenet::Precision::Bf16)
        .expect("bf16 where the CPU has it");
    let text = std::fs::read_to_string(face_dir(&data).join("reference_detections.json"))
        .expect("reference detections");
    let reference: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut session = detector.session(2);
    let (mut worst_score, mut worst_px) = (0.0f32, 0.0f64);
    for (image, want) in reference["images"].as_object().expect("images") {
        let img = load_image(&data.join(image)).expect("image");
        let (found, frame) = session.detect(&img, None);
        let want = want.as_array().expect("detections");
        assert_eq!(found.len(), want.len(), "{image}: {found:?}");
        for (d, w) in found.iter().zip(want) {
            let score = w["score"].as_f64().expect("score") as f32;
            worst_score = worst_score.max((d.score - score).abs());
            let got = frame.to_pixels(d.bbox);
            for (k, v) in w["box"].as_array().expect("box").iter().enumerate() {
                worst_px = worst_px.max((got[k] - v.as_f64().expect("coordinate")).abs());
            }
        }
    }
    println!("bf16: max |Δscore| {worst_score:.4}, max |Δbox| {worst_px:.2} px");
    assert!(worst_score <= 0.01 && worst_px <= 1.0);
}
