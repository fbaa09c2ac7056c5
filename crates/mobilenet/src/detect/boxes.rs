//! Box decoding, overlap and non-maximum suppression.
//!
//! Boxes are `[ymin, xmin, ymax, xmax]` relative to the detector's input, as the Object
//! Detection API writes them.

use serde::Serialize;

use super::config::NmsConfig;

/// One detected object.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Detection {
    /// Class index: the logit's index (1 is the first labelled class; 0 is background).
    pub class: usize,
    /// Score in [0, 1].
    pub score: f32,
    /// `[ymin, xmin, ymax, xmax]` relative to the input.
    pub bbox: [f32; 4],
}

/// Decodes box offsets `(ty, tx, th, tw)` against an anchor with the Faster R-CNN box coder of
/// the Object Detection API: centre `t·size/scale + anchor centre`, size
/// `exp(t/scale)·anchor size` (f32 throughout, in TensorFlow's order of operations).
pub fn decode(anchor: [f32; 4], code: [f32; 4], scales: [f32; 4]) -> [f32; 4] {
    let (ha, wa) = (anchor[2] - anchor[0], anchor[3] - anchor[1]);
    let (yc, xc) = (anchor[0] + ha / 2.0, anchor[1] + wa / 2.0);
    let half_h = (code[2] / scales[2]).exp() * ha / 2.0;
    let half_w = (code[3] / scales[3]).exp() * wa / 2.0;
    let cy = code[0] / scales[0] * ha + yc;
    let cx = code[1] / scales[1] * wa + xc;
    [cy - half_h, cx - half_w, cy + half_h, cx + half_w]
}

/// The inverse of [`decode`]: the offsets that turn `anchor` into `bbox` (training targets).
pub fn encode(anchor: [f32; 4], bbox: [f32; 4], scales: [f32; 4]) -> [f32; 4] {
    let (ha, wa) = (anchor[2] - anchor[0], anchor[3] - anchor[1]);
    let (yc, xc) = (anchor[0] + ha / 2.0, anchor[1] + wa / 2.0);
    let (h, w) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    let (cy, cx) = (bbox[0] + h / 2.0, bbox[1] + w / 2.0);
    [
        (cy - yc) / ha * scales[0],
        (cx - xc) / wa * scales[1],
        (h / ha).ln() * scales[2],
        (w / wa).ln() * scales[3],
    ]
}

/// Intersection over union of two boxes (corners in either order); 0 when either is empty.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let norm = |b: [f32; 4]| {
        [
            b[0].min(b[2]),
            b[1].min(b[3]),
            b[0].max(b[2]),
            b[1].max(b[3]),
        ]
    };
    let (a, b) = (norm(a), norm(b));
    let area = |b: [f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let (area_a, area_b) = (area(a), area(b));
    if area_a <= 0.0 || area_b <= 0.0 {
        return 0.0;
    }
    let ih = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iw = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ih * iw;
    inter / (area_a + area_b - inter)
}

/// Greedy non-maximum suppression per class: candidates above `min_score`, best first (ties
/// by class, then index); a box is kept unless it overlaps a kept box of its class by more than
/// `iou`. Returns at most `max_detections` over all classes, best first.
///
/// Candidates of all classes are visited in one score order, so the work stops at the
/// `max_detections`-th kept box; the result is that of suppressing each class on its own and
/// keeping the best `max_detections` (a box's fate depends only on better boxes of its class).
///
/// `scores` is `[anchors × classes]` for classes `1..=classes`; `boxes` one per anchor.
pub fn nms(
    boxes: &[[f32; 4]],
    scores: &[f32],
    classes: usize,
    config: &NmsConfig,
) -> Vec<Detection> {
    let mut candidates: Vec<(f32, usize, usize)> = scores
        .iter()
        .enumerate()
        .filter(|&(_, &s)| s > config.min_score)
        .map(|(i, &s)| (s, i % classes, i / classes))
        .collect();
    let order = |a: &(f32, usize, usize), b: &(f32, usize, usize)| {
        b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
    };
    let mut kept: Vec<Vec<[f32; 4]>> = vec![Vec::new(); classes];
    let mut out: Vec<Detection> = Vec::new();
    // Sorting every candidate costs more than the suppression when a low `min_score` lets tens
    // of thousands through (evaluation): sort the best few chunk by chunk instead.
    let chunk = 4 * config.max_detections + 64;
    let mut rest: &mut [(f32, usize, usize)] = &mut candidates;
    while !rest.is_empty() && out.len() < config.max_detections {
        let n = chunk.min(rest.len());
        if n < rest.len() {
            rest.select_nth_unstable_by(n - 1, order);
        }
        let (best, tail) = std::mem::take(&mut rest).split_at_mut(n);
        best.sort_by(order);
        for &(score, class, i) in best.iter() {
            if out.len() == config.max_detections {
                break;
            }
            if kept[class].iter().all(|&k| iou(k, boxes[i]) <= config.iou) {
                kept[class].push(boxes[i]);
                out.push(Detection {
                    class: class + 1,
                    score,
                    bbox: boxes[i],
                });
            }
        }
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_by_hand() {
        let a = [0.0, 0.0, 2.0, 2.0];
        assert_eq!(iou(a, a), 1.0);
        // Overlap 1×1 of areas 4 and 4: 1 / 7.
        assert!((iou(a, [1.0, 1.0, 3.0, 3.0]) - 1.0 / 7.0).abs() < 1e-7);
        assert_eq!(iou(a, [2.0, 2.0, 3.0, 3.0]), 0.0);
        // Corners in the wrong order are put right; an empty box overlaps nothing.
        assert_eq!(iou(a, [2.0, 2.0, 0.0, 0.0]), 1.0);
        assert_eq!(iou(a, [1.0, 1.0, 1.0, 3.0]), 0.0);
    }

    #[test]
    fn decode_inverts_encode_and_zero_is_the_anchor() {
        let scales = [10.0, 10.0, 5.0, 5.0];
        let anchor = [0.2, 0.3, 0.6, 0.5];
        let same = decode(anchor, [0.0; 4], scales);
        for k in 0..4 {
            assert!((same[k] - anchor[k]).abs() < 1e-6, "{same:?}");
        }
        let bbox = [0.1, 0.35, 0.7, 0.45];
        let back = decode(anchor, encode(anchor, bbox, scales), scales);
        for k in 0..4 {
            assert!((back[k] - bbox[k]).abs() < 1e-6, "{back:?}");
        }
        // By hand: ty = 1 moves the centre by a tenth of the anchor's height (0.04), th = 5
        // multiplies the height by e.
        let moved = decode(anchor, [1.0, 0.0, 5.0, 0.0], scales);
        let h = 0.4 * std::f32::consts::E;
        assert!((moved[0] - (0.44 - h / 2.0)).abs() < 1e-6);
        assert!((moved[2] - (0.44 + h / 2.0)).abs() < 1e-6);
    }

    #[test]
    fn nms_by_hand() {
        let boxes = [
            [0.0, 0.0, 1.0, 1.0], // 0
            [0.0, 0.1, 1.0, 1.1], // 1: IoU 0.82 with 0
            [0.0, 0.5, 1.0, 1.5], // 2: IoU 1/3 with 0
            [2.0, 2.0, 3.0, 3.0], // 3: apart
            [0.0, 0.0, 1.0, 1.0], // 4: same as 0, other class only
        ];
        // Two classes: [class 1, class 2] per anchor.
        let scores = [
            0.9, 0.0, //
            0.8, 0.0, //
            0.7, 0.0, //
            0.3, 0.2, //
            0.0, 0.95,
        ];
        let config = NmsConfig {
            min_score: 0.25,
            iou: 0.5,
            max_detections: 10,
        };
        let got = nms(&boxes, &scores, 2, &config);
        let summary: Vec<(usize, f32)> = got.iter().map(|d| (d.class, d.score)).collect();
        // Class 2's box 4 is not suppressed by class 1's box 0; box 1 is (IoU > 0.5); box 3's
        // class 2 score is under min_score.
        assert_eq!(summary, [(2, 0.95), (1, 0.9), (1, 0.7), (1, 0.3)]);
        assert_eq!(got[2].bbox, boxes[2]);
        let config = NmsConfig {
            max_detections: 2,
            ..config
        };
        assert_eq!(nms(&boxes, &scores, 2, &config).len(), 2);
        // Many candidates (several chunks): the same as suppressing one class at a time.
        let mut rng = crate::Rng::new(5);
        let many: Vec<[f32; 4]> = (0..3000)
            .map(|_| {
                let (y, x) = (rng.uniform(), rng.uniform());
                [
                    y,
                    x,
                    y + 0.05 + 0.2 * rng.uniform(),
                    x + 0.05 + 0.2 * rng.uniform(),
                ]
            })
            .collect();
        let many_scores: Vec<f32> = (0..3000 * 3).map(|_| rng.uniform()).collect();
        let config_many = NmsConfig {
            min_score: 0.01,
            iou: 0.5,
            max_detections: 20,
        };
        let got = nms(&many, &many_scores, 3, &config_many);
        let mut want = Vec::new();
        for class in 0..3 {
            let mut cand: Vec<(f32, usize)> = (0..3000)
                .map(|i| (many_scores[i * 3 + class], i))
                .filter(|c| c.0 > 0.01)
                .collect();
            cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut kept: Vec<usize> = Vec::new();
            for (s, i) in cand {
                if kept.iter().all(|&k| iou(many[k], many[i]) <= 0.5) {
                    kept.push(i);
                    want.push((s, class + 1, i));
                }
            }
        }
        want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        want.truncate(20);
        let want: Vec<(f32, usize, [f32; 4])> =
            want.iter().map(|&(s, c, i)| (s, c, many[i])).collect();
        let got: Vec<(f32, usize, [f32; 4])> =
            got.iter().map(|d| (d.score, d.class, d.bbox)).collect();
        assert_eq!(got, want);
        // With IoU 0.3 box 2 (1/3 with box 0) goes too.
        let config = NmsConfig {
            iou: 0.3,
            max_detections: 10,
            ..config
        };
        assert_eq!(nms(&boxes, &scores, 2, &config).len(), 3);
    }
}
