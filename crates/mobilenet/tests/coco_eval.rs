//! Our COCO box evaluation against pycocotools on the same detections: the committed fixture
//! (`tests/fixtures/coco128_eval.json`, written by `scripts/coco_eval_fixture.py`, seeded) holds
//! 1,395 synthetic detections for COCO128 (ties in score, duplicates, wrong classes, crowd
//! objects, two images past 100 detections) and the twelve numbers `COCOeval.summarize()`
//! printed for them.

mod common;

use mobilenet::detect::{coco_evaluate, CocoDataset, CocoResult};

#[test]
fn coco_stats_match_pycocotools() {
    let Some(data) = common::shared_data("coco_stats_match_pycocotools") else {
        return;
    };
    let gt = CocoDataset::load(&data.join("detection/coco128/instances_coco128.json"))
        .expect("COCO128 annotations");
    let text = include_str!("fixtures/coco128_eval.json");
    let fixture: serde_json::Value = serde_json::from_str(text).expect("fixture");
    let results: Vec<CocoResult> =
        serde_json::from_value(fixture["results"].clone()).expect("results");
    let want: Vec<f64> = serde_json::from_value(fixture["stats"].clone()).expect("stats");
    let got = coco_evaluate(&gt, &results).expect("evaluate").to_array();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() < 1e-12,
            "stat {i}: ours {g} vs pycocotools {w}\n{got:?}"
        );
    }
}
