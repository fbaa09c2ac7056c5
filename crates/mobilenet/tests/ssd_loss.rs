//! Our SSD loss against torchvision's `SSD.compute_loss` on one batch: the committed fixture
//! (`tests/fixtures/ssd_loss.json`, written by `scripts/ssd_loss_fixture.py`, seeded) holds 60
//! random anchors, two images' objects, box offsets, logits, torchvision's matches, its two
//! losses and autograd's gradients.

use mobilenet::train::ssd::{match_anchors, ssd_loss, Targets};

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().expect("number") as f32),
        }
    }
    walk(v, &mut out);
    out
}

#[test]
fn loss_and_gradient_match_torchvision() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/ssd_loss.json")).expect("fixture");
    let classes = fixture["classes"].as_u64().expect("should succeed") as usize;
    let anchors: Vec<[f32; 4]> = f32s(&fixture["anchors"])
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    let n = anchors.len();
    let targets: Vec<Targets> = fixture["targets"]
        .as_array()
        .expect("should succeed")
        .iter()
        .map(|t| Targets {
            boxes: f32s(&t["boxes"])
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect(),
            classes: t["classes"]
                .as_array()
                .expect("should succeed")
                .iter()
                .map(|c| c.as_u64().expect("should succeed") as usize)
                .collect(),
        })
        .collect();
    // Our matching is torchvision's SSDMatcher.
    let matches: Vec<Vec<Option<usize>>> = targets
        .iter()
        .map(|t| match_anchors(&anchors, t, 0.5))
        .collect();
    for (i, want) in fixture["matches"]
        .as_array()
        .expect("should succeed")
        .iter()
        .enumerate()
    {
        let want: Vec<Option<usize>> = want
            .as_array()
            .expect("should succeed")
            .iter()
            .map(|m| usize::try_from(m.as_i64().expect("should succeed")).ok())
            .collect();
        assert_eq!(matches[i], want, "image {i}");
    }
    let codes = f32s(&fixture["codes"]);
    let logits = f32s(&fixture["logits"]);
    let c: Vec<&[f32]> = codes.chunks_exact(n * 4).collect();
    let l: Vec<&[f32]> = logits.chunks_exact(n * classes).collect();
    let mut dc = vec![0.0f32; codes.len()];
    let mut dl = vec![0.0f32; logits.len()];
    let mut dcr: Vec<&mut [f32]> = dc.chunks_exact_mut(n * 4).collect();
    let mut dlr: Vec<&mut [f32]> = dl.chunks_exact_mut(n * classes).collect();
    let loss = ssd_loss(
        &anchors,
        &c,
        &l,
        &targets,
        &matches,
        (classes, [10.0, 10.0, 5.0, 5.0], 3),
        &mut dcr,
        &mut dlr,
    );
    let want_boxes = fixture["loss_boxes"].as_f64().expect("should succeed");
    let want_classes = fixture["loss_classes"].as_f64().expect("should succeed");
    assert!(
        (loss.boxes - want_boxes).abs() < 1e-5 * want_boxes,
        "{} vs {want_boxes}",
        loss.boxes
    );
    assert!(
        (loss.classes - want_classes).abs() < 1e-5 * want_classes,
        "{} vs {want_classes}",
        loss.classes
    );
    for (what, ours, theirs) in [
        ("codes", &dc, f32s(&fixture["grad_codes"])),
        ("logits", &dl, f32s(&fixture["grad_logits"])),
    ] {
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "gradient of the {what}: off by up to {worst}");
    }
}
