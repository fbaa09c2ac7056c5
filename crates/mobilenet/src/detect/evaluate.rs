//! A detector over a COCO-annotated image folder: its detections in COCO's results format,
//! ready for [`super::coco_evaluate`].

use std::path::Path;

use serde::Serialize;

use super::any::DetectSession;
use super::boxes::{iou, Detection};
use super::coco::{CocoCategory, CocoDataset};
use super::cocoeval::CocoResult;
use super::config::NmsConfig;
use crate::error::ImageError;
use crate::preprocess::load_image;

/// The category id of each detector class (`map[k − 1]` for class `k`): by name when every
/// label names a category; otherwise class `k` is category id `k` (the Object Detection API's
/// COCO label map), when the detector has a class for every id.
///
/// # Errors
///
/// Neither rule applies: says which labels are missing.
pub fn category_map(labels: &[String], categories: &[CocoCategory]) -> Result<Vec<u64>, String> {
    let by_name: Option<Vec<u64>> = labels
        .iter()
        .map(|l| categories.iter().find(|c| &c.name == l).map(|c| c.id))
        .collect();
    if let Some(map) = by_name {
        return Ok(map);
    }
    let largest = categories.iter().map(|c| c.id).max().unwrap_or(0);
    if labels.len() as u64 >= largest {
        return Ok((1..=labels.len() as u64).collect());
    }
    let missing: Vec<&str> = labels
        .iter()
        .filter(|l| !categories.iter().any(|c| &c.name == *l))
        .take(5)
        .map(|l| l.as_str())
        .collect();
    Err(format!(
        "the detector's classes do not match the annotations' categories: labels {missing:?} \
         are not category names, and its {} classes do not cover category ids up to {largest}",
        labels.len()
    ))
}

/// Runs the detector on every image of `data` (files under `images`) and returns its
/// detections as COCO results (boxes in each image's pixels), image by image in file order.
/// `progress` is called after each image.
///
/// # Errors
///
/// An image that cannot be read or decoded (named), or whose size differs from the
/// annotations' (boxes would land in the wrong place).
pub fn detect_dataset(
    session: &mut dyn DetectSession,
    data: &CocoDataset,
    images: &Path,
    nms: &NmsConfig,
    map: &[u64],
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<CocoResult>, ImageError> {
    let mut results = Vec::new();
    for (i, entry) in data.images.iter().enumerate() {
        let path = images.join(&entry.file_name);
        let img = load_image(&path)?;
        if (img.width(), img.height()) != (entry.width, entry.height) {
            return Err(ImageError::Decode {
                path,
                reason: format!(
                    "the image is {}×{}, the annotations say {}×{} (image id {})",
                    img.width(),
                    img.height(),
                    entry.width,
                    entry.height,
                    entry.id
                ),
            });
        }
        let (found, frame) = session.detect(&img, Some(nms));
        for d in found {
            let Some(&category_id) = map.get(d.class - 1) else {
                continue;
            };
            results.push(CocoResult {
                image_id: entry.id,
                category_id,
                bbox: frame.to_pixels(d.bbox),
                score: d.score as f64,
            });
        }
        progress(i + 1);
    }
    Ok(results)
}

/// How closely one detector's detections follow another's (int8 against float) over images:
/// each reference detection, best score first, matched to the unmatched detection of its
/// class that overlaps it most, if that IoU reaches the threshold.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Agreement {
    /// Detections of the reference.
    pub reference: usize,
    /// Detections of the other.
    pub other: usize,
    /// Pairs matched.
    pub matched: usize,
    /// Sum of the matched pairs' IoU.
    pub iou_sum: f64,
    /// Smallest IoU of a matched pair (0 when none).
    pub iou_min: f64,
    /// Sum and largest absolute score difference of the matched pairs.
    pub score_diff_sum: f64,
    /// See `score_diff_sum`.
    pub score_diff_max: f64,
}

impl Agreement {
    /// Adds one image's detections.
    pub fn add(&mut self, reference: &[Detection], other: &[Detection], min_iou: f32) {
        self.reference += reference.len();
        self.other += other.len();
        let mut taken = vec![false; other.len()];
        let mut order: Vec<&Detection> = reference.iter().collect();
        order.sort_by(|a, b| b.score.total_cmp(&a.score));
        for r in order {
            let best = other
                .iter()
                .enumerate()
                .filter(|(j, o)| !taken[*j] && o.class == r.class)
                .map(|(j, o)| (j, iou(r.bbox, o.bbox)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((j, v)) = best.filter(|b| b.1 >= min_iou) {
                taken[j] = true;
                self.iou_min = if self.matched == 0 {
                    v as f64
                } else {
                    self.iou_min.min(v as f64)
                };
                self.matched += 1;
                self.iou_sum += v as f64;
                let d = (r.score - other[j].score).abs() as f64;
                self.score_diff_sum += d;
                self.score_diff_max = self.score_diff_max.max(d);
            }
        }
    }

    /// Mean IoU of the matched pairs (1 when none).
    pub fn mean_iou(&self) -> f64 {
        if self.matched == 0 {
            1.0
        } else {
            self.iou_sum / self.matched as f64
        }
    }

    /// Mean absolute score difference of the matched pairs.
    pub fn mean_score_diff(&self) -> f64 {
        self.score_diff_sum / self.matched.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_by_name_or_by_id() {
        let cats = |names: &[(u64, &str)]| -> Vec<CocoCategory> {
            names
                .iter()
                .map(|&(id, name)| CocoCategory {
                    id,
                    name: name.into(),
                })
                .collect()
        };
        let coco = cats(&[(1, "person"), (3, "car"), (5, "airplane")]);
        let labels = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            category_map(&labels(&["car", "person"]), &coco),
            Ok(vec![3, 1])
        );
        let ids = labels(&["a", "b", "c", "d", "e"]);
        assert_eq!(category_map(&ids, &coco), Ok(vec![1, 2, 3, 4, 5]));
        let err = category_map(&labels(&["face"]), &coco).expect_err("should fail");
        assert!(err.contains("\"face\"") && err.contains("up to 5"), "{err}");
    }
}
