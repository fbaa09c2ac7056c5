//! COCO box evaluation, step for step as pycocotools' `COCOeval` (iouType `bbox`) computes it,
//! so that the twelve numbers it prints are the ones it would print.
//!
//! Per image and category: detections sorted by score (stably), at most 100; each, at each IoU
//! threshold 0.50:0.05:0.95, takes the best still-free ground truth it overlaps at least that
//! much (crowd regions may be taken again and use the detection's area as the union; a match
//! to an ignored object — crowd, or outside the size range — is ignored; ignored objects are
//! only taken when nothing else is). Per category over all images: detections by score,
//! precision made monotone, read at 101 recall points; AP is the mean over thresholds, recall
//! points and categories that have objects (−1 where none has).

use serde::{Deserialize, Serialize};

use super::coco::{CocoAnnotation, CocoDataset};

/// One detection in COCO's results format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoResult {
    /// The image.
    pub image_id: u64,
    /// The category.
    pub category_id: u64,
    /// `[x, y, width, height]` in pixels.
    pub bbox: [f64; 4],
    /// Confidence.
    pub score: f64,
}

/// The twelve numbers of `COCOeval.summarize()`, in its order; −1 where undefined.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CocoStats {
    /// AP at IoU 0.50:0.95, all sizes, 100 detections (the COCO mAP).
    pub ap: f64,
    /// AP at IoU 0.50.
    pub ap50: f64,
    /// AP at IoU 0.75.
    pub ap75: f64,
    /// AP of small objects (area < 32²).
    pub ap_small: f64,
    /// AP of medium objects (32² to 96²).
    pub ap_medium: f64,
    /// AP of large objects (> 96²).
    pub ap_large: f64,
    /// Recall with 1 detection per image.
    pub ar1: f64,
    /// With 10.
    pub ar10: f64,
    /// With 100.
    pub ar100: f64,
    /// Recall of small objects (100 detections).
    pub ar_small: f64,
    /// Of medium objects.
    pub ar_medium: f64,
    /// Of large objects.
    pub ar_large: f64,
}

impl CocoStats {
    /// The numbers in `summarize()`'s order.
    pub fn to_array(&self) -> [f64; 12] {
        [
            self.ap,
            self.ap50,
            self.ap75,
            self.ap_small,
            self.ap_medium,
            self.ap_large,
            self.ar1,
            self.ar10,
            self.ar100,
            self.ar_small,
            self.ar_medium,
            self.ar_large,
        ]
    }
}

const MAX_DETS: [usize; 3] = [1, 10, 100];
const AREAS: [(f64, f64); 4] = [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];
const THRESHOLDS: usize = 10;
const RECALLS: usize = 101;

/// numpy's `linspace(start, stop, n)`: `i · step + start`, the last value exactly `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    let step = (stop - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                stop
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

/// pycocotools' box IoU (`bbIou`): a crowd ground truth's union is the detection's area.
fn box_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = d[2] * d[3];
    let u = if crowd { da } else { da + g[2] * g[3] - i };
    i / u
}

/// One image and category at one size range: what `evaluateImg` returns.
struct ImageEval {
    /// Per threshold, per detection (score order): the matched ground truth's id, 0 if none.
    dt_matches: Vec<Vec<u64>>,
    dt_ignore: Vec<Vec<bool>>,
    dt_scores: Vec<f64>,
    gt_ignore: Vec<bool>,
}

/// Errors of [`evaluate`].
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A detection names an image the annotations do not have (pycocotools refuses these).
    #[error("result {index}: image_id {image_id} is not in the annotations")]
    UnknownImage {
        /// Index in the results.
        index: usize,
        /// The image id.
        image_id: u64,
    },
    /// A detection's box or score is not finite.
    #[error("result {index}: box {bbox:?} or score {score} is not finite")]
    NotFinite {
        /// Index in the results.
        index: usize,
        /// Its box.
        bbox: [f64; 4],
        /// Its score.
        score: f64,
    },
}

/// Evaluates `results` against the annotations as `COCOeval(gt, dt, "bbox")` followed by
/// `evaluate()`, `accumulate()`, `summarize()` does.
///
/// # Errors
///
/// A result for an image the annotations lack, or with a non-finite box or score.
pub fn evaluate(gt: &CocoDataset, results: &[CocoResult]) -> Result<CocoStats, EvalError> {
    let mut image_ids: Vec<u64> = gt.images.iter().map(|i| i.id).collect();
    image_ids.sort_unstable();
    let mut cat_ids: Vec<u64> = gt.categories.iter().map(|c| c.id).collect();
    cat_ids.sort_unstable();
    let image_index = |id: u64| image_ids.binary_search(&id).ok();
    let cat_index = |id: u64| cat_ids.binary_search(&id).ok();
    let (ni, nk) = (image_ids.len(), cat_ids.len());
    // Ground truths and detections per (category, image), in file order.
    let mut gts: Vec<Vec<&CocoAnnotation>> = vec![Vec::new(); nk * ni];
    for a in &gt.annotations {
        if let (Some(k), Some(i)) = (cat_index(a.category_id), image_index(a.image_id)) {
            gts[k * ni + i].push(a);
        }
    }
    // (id, score, box, area); ids count from 1 in results order, as `loadRes` numbers them.
    type Det = (u64, f64, [f64; 4], f64);
    let mut dts: Vec<Vec<Det>> = vec![Vec::new(); nk * ni];
    for (index, r) in results.iter().enumerate() {
        if r.bbox.iter().any(|v| !v.is_finite()) || !r.score.is_finite() {
            return Err(EvalError::NotFinite {
                index,
                bbox: r.bbox,
                score: r.score,
            });
        }
        let Some(i) = image_index(r.image_id) else {
            return Err(EvalError::UnknownImage {
                index,
                image_id: r.image_id,
            });
        };
        if let Some(k) = cat_index(r.category_id) {
            let det = (index as u64 + 1, r.score, r.bbox, r.bbox[2] * r.bbox[3]);
            dts[k * ni + i].push(det);
        }
    }
    for d in &mut dts {
        // numpy's mergesort on −score: stable.
        d.sort_by(|a, b| b.1.total_cmp(&a.1));
        d.truncate(MAX_DETS[2]);
    }
    let thresholds = linspace(0.5, 0.95, THRESHOLDS);
    let recall_points = linspace(0.0, 1.0, RECALLS);
    // evaluateImg for every category, size range and image (None: no objects, no detections).
    let mut evals: Vec<Option<ImageEval>> = Vec::with_capacity(nk * AREAS.len() * ni);
    for k in 0..nk {
        for &(lo, hi) in &AREAS {
            for i in 0..ni {
                let (g, d) = (&gts[k * ni + i], &dts[k * ni + i]);
                evals.push(evaluate_image(g, d, (lo, hi), &thresholds));
            }
        }
    }
    // accumulate: precision[t][r][k][a][m] and recall[t][k][a][m], −1 where undefined.
    let (na, nm) = (AREAS.len(), MAX_DETS.len());
    let mut precision = vec![-1.0; THRESHOLDS * RECALLS * nk * na * nm];
    let mut recall = vec![-1.0; THRESHOLDS * nk * na * nm];
    let p_at = |t: usize, r: usize, k: usize, a: usize, m: usize| {
        (((t * RECALLS + r) * nk + k) * na + a) * nm + m
    };
    let r_at = |t: usize, k: usize, a: usize, m: usize| ((t * nk + k) * na + a) * nm + m;
    for k in 0..nk {
        for a in 0..na {
            let images: Vec<&ImageEval> =
                evals[(k * na + a) * ni..][..ni].iter().flatten().collect();
            if images.is_empty() {
                continue;
            }
            let npig = images
                .iter()
                .flat_map(|e| &e.gt_ignore)
                .filter(|&&ig| !ig)
                .count();
            for (m, &max_det) in MAX_DETS.iter().enumerate() {
                // (score, image, detection) in image order, then stably by score.
                let mut order: Vec<(f64, usize, usize)> = images
                    .iter()
                    .enumerate()
                    .flat_map(|(e, img)| {
                        img.dt_scores
                            .iter()
                            .take(max_det)
                            .enumerate()
                            .map(move |(d, &s)| (s, e, d))
                    })
                    .collect();
                order.sort_by(|x, y| y.0.total_cmp(&x.0));
                if npig == 0 {
                    continue;
                }
                for t in 0..THRESHOLDS {
                    let (mut tp, mut fp) = (0.0f64, 0.0f64);
                    let mut rc = Vec::with_capacity(order.len());
                    let mut pr = Vec::with_capacity(order.len());
                    for &(_, e, d) in &order {
                        let img = images[e];
                        let ignored = img.dt_ignore[t][d];
                        let matched = img.dt_matches[t][d] != 0;
                        if !ignored {
                            if matched {
                                tp += 1.0;
                            } else {
                                fp += 1.0;
                            }
                        }
                        rc.push(tp / npig as f64);
                        pr.push(tp / (fp + tp + f64::EPSILON));
                    }
                    recall[r_at(t, k, a, m)] = rc.last().copied().unwrap_or(0.0);
                    for i in (1..pr.len()).rev() {
                        if pr[i] > pr[i - 1] {
                            pr[i - 1] = pr[i];
                        }
                    }
                    for (r, &point) in recall_points.iter().enumerate() {
                        // searchsorted(rc, point, side="left"); past the end: stays 0.
                        let pi = rc.partition_point(|&v| v < point);
                        precision[p_at(t, r, k, a, m)] = pr.get(pi).copied().unwrap_or(0.0);
                    }
                }
            }
        }
    }
    let mean = |values: &mut dyn Iterator<Item = f64>| {
        let kept: Vec<f64> = values.filter(|&v| v > -1.0).collect();
        if kept.is_empty() {
            -1.0
        } else {
            kept.iter().sum::<f64>() / kept.len() as f64
        }
    };
    let ap = |t: Option<usize>, a: usize| {
        let ts: Vec<usize> = t.map_or((0..THRESHOLDS).collect(), |t| vec![t]);
        let mut it = ts
            .into_iter()
            .flat_map(|t| (0..RECALLS).flat_map(move |r| (0..nk).map(move |k| (t, r, k))));
        mean(&mut std::iter::from_fn(|| {
            it.next().map(|(t, r, k)| precision[p_at(t, r, k, a, 2)])
        }))
    };
    let ar = |a: usize, m: usize| {
        let mut it = (0..THRESHOLDS).flat_map(|t| (0..nk).map(move |k| (t, k)));
        mean(&mut std::iter::from_fn(|| {
            it.next().map(|(t, k)| recall[r_at(t, k, a, m)])
        }))
    };
    Ok(CocoStats {
        ap: ap(None, 0),
        ap50: ap(Some(0), 0),
        ap75: ap(Some(5), 0),
        ap_small: ap(None, 1),
        ap_medium: ap(None, 2),
        ap_large: ap(None, 3),
        ar1: ar(0, 0),
        ar10: ar(0, 1),
        ar100: ar(0, 2),
        ar_small: ar(1, 2),
        ar_medium: ar(2, 2),
        ar_large: ar(3, 2),
    })
}

/// `evaluateImg` for one image and category (`dts` already sorted by score, at most 100).
fn evaluate_image(
    gts: &[&CocoAnnotation],
    dts: &[(u64, f64, [f64; 4], f64)],
    (lo, hi): (f64, f64),
    thresholds: &[f64],
) -> Option<ImageEval> {
    if gts.is_empty() && dts.is_empty() {
        return None;
    }
    let outside = |area: f64| area < lo || area > hi;
    // Objects not ignored first (stably).
    let mut gt: Vec<(&CocoAnnotation, bool)> = gts
        .iter()
        .map(|g| (*g, g.iscrowd || outside(CocoDataset::area(g))))
        .collect();
    gt.sort_by_key(|&(_, ignore)| ignore);
    let ious: Vec<Vec<f64>> = dts
        .iter()
        .map(|d| {
            gt.iter()
                .map(|(g, _)| box_iou(&d.2, &g.bbox, g.iscrowd))
                .collect()
        })
        .collect();
    let gt_ignore: Vec<bool> = gt.iter().map(|&(_, ig)| ig).collect();
    let mut dt_matches = vec![vec![0u64; dts.len()]; thresholds.len()];
    let mut dt_ignore = vec![vec![false; dts.len()]; thresholds.len()];
    for (t, &threshold) in thresholds.iter().enumerate() {
        let mut gt_taken = vec![0u64; gt.len()];
        for (di, d) in dts.iter().enumerate() {
            let mut best = threshold.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for (gi, (g, _)) in gt.iter().enumerate() {
                if gt_taken[gi] > 0 && !g.iscrowd {
                    continue;
                }
                if m.is_some_and(|m| !gt_ignore[m]) && gt_ignore[gi] {
                    break;
                }
                if ious[di][gi] < best {
                    continue;
                }
                best = ious[di][gi];
                m = Some(gi);
            }
            if let Some(m) = m {
                dt_ignore[t][di] = gt_ignore[m];
                dt_matches[t][di] = gt[m].0.id;
                gt_taken[m] = d.0;
            }
        }
        for (di, d) in dts.iter().enumerate() {
            if dt_matches[t][di] == 0 && outside(d.3) {
                dt_ignore[t][di] = true;
            }
        }
    }
    Some(ImageEval {
        dt_matches,
        dt_ignore,
        dt_scores: dts.iter().map(|d| d.1).collect(),
        gt_ignore,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Hand-computed: one image, one category, two objects; detections: a perfect match
    /// (score 0.9), a duplicate of it (0.8: a false positive), a box over the second object
    /// at IoU 0.75 (0.7).
    #[test]
    fn by_hand() {
        let gt = CocoDataset::from_bytes(
            br#"{"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
              {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "area": 100}]}"#,
            Path::new("gt.json"),
        )
        .expect("should succeed");
        let r = |bbox: [f64; 4], score| CocoResult {
            image_id: 1,
            category_id: 1,
            bbox,
            score,
        };
        // [50, 50, 10, 7.5] against [50, 50, 10, 10]: IoU 75 / 100.
        let results = [
            r([0.0, 0.0, 10.0, 10.0], 0.9),
            r([0.0, 0.0, 10.0, 10.0], 0.8),
            r([50.0, 50.0, 10.0, 7.5], 0.7),
        ];
        let s = evaluate(&gt, &results).expect("should succeed");
        // IoU ≥ 0.75 for thresholds 0.50..0.75 (6 of 10): precision 1 up to recall 0.5, then
        // 2/3 up to 1 → (51·1 + 50·2/3)/101; above 0.75 only the first object: 51/101.
        let both = (51.0 + 50.0 * 2.0 / 3.0) / 101.0;
        let one = 51.0 / 101.0;
        assert!((s.ap50 - both).abs() < 1e-12, "{s:?}");
        assert!((s.ap75 - both).abs() < 1e-12, "{s:?}");
        assert!(
            (s.ap - (6.0 * both + 4.0 * one) / 10.0).abs() < 1e-12,
            "{s:?}"
        );
        // Areas of 100 are small: the medium and large ranges have no objects.
        assert_eq!(s.ap_medium, -1.0);
        assert_eq!((s.ar1, s.ar100), (0.5, (6.0 * 1.0 + 4.0 * 0.5) / 10.0));
        let bad = [CocoResult {
            image_id: 9,
            ..results[0].clone()
        }];
        assert!(evaluate(&gt, &bad)
            .expect_err("should fail")
            .to_string()
            .contains("image_id 9"));
    }
}
