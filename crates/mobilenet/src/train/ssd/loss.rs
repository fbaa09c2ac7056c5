//! SSD's training targets and loss: anchors matched to objects, smooth-L1 box loss on the
//! matched anchors, softmax cross-entropy with hard negative mining (3 negatives per positive),
//! both divided by the batch's matched anchors — torchvision's `SSD.compute_loss` (its
//! `SSDMatcher`: IoU ≥ 0.5, and each object's best anchor forced to it).

use crate::detect::{encode, iou};

/// The objects of one image: boxes `[ymin, xmin, ymax, xmax]` relative to the input, and their
/// classes (1-based: 0 is background).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    /// Boxes.
    pub boxes: Vec<[f32; 4]>,
    /// Classes, one per box.
    pub classes: Vec<usize>,
}

/// The object each anchor is matched to: the object it overlaps most if that IoU is at least
/// `threshold`; then every object takes its own best anchor (later objects win a shared one).
/// Ties go to the first object or anchor.
pub fn match_anchors(
    anchors: &[[f32; 4]],
    targets: &Targets,
    threshold: f32,
) -> Vec<Option<usize>> {
    let g = targets.boxes.len();
    let mut best_anchor = vec![(f32::NEG_INFINITY, 0usize); g];
    let matches: Vec<Option<usize>> = anchors
        .iter()
        .enumerate()
        .map(|(a, anchor)| {
            let mut best: Option<(f32, usize)> = None;
            for (o, b) in targets.boxes.iter().enumerate() {
                let v = iou(*anchor, *b);
                if best.is_none_or(|(bv, _)| v > bv) {
                    best = Some((v, o));
                }
                if v > best_anchor[o].0 {
                    best_anchor[o] = (v, a);
                }
            }
            best.filter(|&(v, _)| v >= threshold).map(|(_, o)| o)
        })
        .collect();
    let mut matches = matches;
    for (o, &(_, a)) in best_anchor.iter().enumerate() {
        if !anchors.is_empty() {
            matches[a] = Some(o);
        }
    }
    matches
}

/// The two parts of the loss, each divided by the matched anchors (at least 1).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SsdLoss {
    /// Smooth L1 of the box offsets of matched anchors.
    pub boxes: f64,
    /// Cross-entropy of matched anchors and the mined negatives.
    pub classes: f64,
    /// Matched anchors in the batch.
    pub positives: usize,
}

impl SsdLoss {
    /// The loss minimised: box + class.
    pub fn total(&self) -> f64 {
        self.boxes + self.classes
    }
}

/// The loss of a batch and its gradient. Per image `i`: `codes[i]` is `[anchors × 4]` box
/// offsets `(ty, tx, th, tw)`, `logits[i]` `[anchors × classes]`; the gradients are written to
/// `dcodes` and `dlogits` (same layouts, overwritten).
#[allow(clippy::too_many_arguments)]
pub fn ssd_loss(
    anchors: &[[f32; 4]],
    codes: &[&[f32]],
    logits: &[&[f32]],
    targets: &[Targets],
    matches: &[Vec<Option<usize>>],
    (classes, scales, neg_per_pos): (usize, [f32; 4], usize),
    dcodes: &mut [&mut [f32]],
    dlogits: &mut [&mut [f32]],
) -> SsdLoss {
    let n = anchors.len();
    let positives: usize = matches.iter().map(|m| m.iter().flatten().count()).sum();
    let norm = positives.max(1) as f64;
    let (mut box_loss, mut class_loss) = (0.0f64, 0.0f64);
    for i in 0..codes.len() {
        let (code, logit) = (codes[i], logits[i]);
        let (dcode, dlogit) = (&mut *dcodes[i], &mut *dlogits[i]);
        dcode.fill(0.0);
        dlogit.fill(0.0);
        // Cross-entropy of every anchor against its target class, and softmax.
        let mut ce = vec![0.0f64; n];
        let mut target = vec![0usize; n];
        for a in 0..n {
            let row = &logit[a * classes..(a + 1) * classes];
            let t = matches[i][a].map_or(0, |o| targets[i].classes[o]);
            target[a] = t;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            ce[a] = sum.ln() + max - row[t] as f64;
        }
        // Hard negatives: the unmatched anchors of highest loss, `neg_per_pos` per positive.
        let pos = matches[i].iter().flatten().count();
        let mut negatives: Vec<usize> = (0..n).filter(|&a| matches[i][a].is_none()).collect();
        negatives.sort_by(|&a, &b| ce[b].total_cmp(&ce[a]).then(a.cmp(&b)));
        negatives.truncate(neg_per_pos * pos);
        let mut chosen = vec![false; n];
        for &a in &negatives {
            chosen[a] = true;
        }
        for a in 0..n {
            if let Some(o) = matches[i][a] {
                chosen[a] = true;
                let want = encode(anchors[a], targets[i].boxes[o], scales);
                for k in 0..4 {
                    let d = (code[a * 4 + k] - want[k]) as f64;
                    box_loss += if d.abs() < 1.0 {
                        0.5 * d * d
                    } else {
                        d.abs() - 0.5
                    };
                    dcode[a * 4 + k] = (d.clamp(-1.0, 1.0) / norm) as f32;
                }
            }
            if chosen[a] {
                class_loss += ce[a];
                let row = &logit[a * classes..(a + 1) * classes];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
                for (c, d) in dlogit[a * classes..(a + 1) * classes]
                    .iter_mut()
                    .enumerate()
                {
                    let p = (row[c] as f64 - max).exp() / sum;
                    let y = if c == target[a] { 1.0 } else { 0.0 };
                    *d = ((p - y) / norm) as f32;
                }
            }
        }
    }
    SsdLoss {
        boxes: box_loss / norm,
        classes: class_loss / norm,
        positives,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    #[test]
    fn matching_by_hand() {
        let anchors = [
            [0.0, 0.0, 0.5, 0.5],
            [0.0, 0.5, 0.5, 1.0],
            [0.5, 0.0, 1.0, 0.5],
            [0.0, 0.0, 0.55, 0.55],
        ];
        let targets = Targets {
            // Object 0 overlaps anchors 0 (IoU 0.826) and 3 (1.0); object 1 overlaps anchor 2
            // by IoU 0.4 only, but takes it as its best.
            boxes: vec![[0.0, 0.0, 0.55, 0.55], [0.8, 0.0, 1.0, 0.5]],
            classes: vec![1, 2],
        };
        let m = match_anchors(&anchors, &targets, 0.5);
        assert_eq!(m, vec![Some(0), None, Some(1), Some(0)]);
        let none = Targets::default();
        assert_eq!(match_anchors(&anchors, &none, 0.5), vec![None; 4]);
    }

    /// The loss's gradient against central differences, through matching, mining and both
    /// parts, on two images.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(11);
        let n = 12;
        let anchors: Vec<[f32; 4]> = (0..n)
            .map(|_| {
                let (y, x) = (rng.uniform() * 0.6, rng.uniform() * 0.6);
                [
                    y,
                    x,
                    y + 0.2 + 0.2 * rng.uniform(),
                    x + 0.2 + 0.2 * rng.uniform(),
                ]
            })
            .collect();
        let targets = vec![
            Targets {
                boxes: vec![anchors[3], [0.1, 0.1, 0.5, 0.6]],
                classes: vec![2, 1],
            },
            Targets {
                boxes: vec![[0.3, 0.2, 0.9, 0.7]],
                classes: vec![1],
            },
        ];
        let classes = 3;
        let matches: Vec<_> = targets
            .iter()
            .map(|t| match_anchors(&anchors, t, 0.5))
            .collect();
        let mut codes: Vec<Vec<f32>> = (0..2).map(|_| rng.signed_vec(n * 4)).collect();
        // Offsets near the targets and far from them: both sides of smooth L1's kink.
        codes[0].iter_mut().for_each(|v| *v *= 3.0);
        let mut logits: Vec<Vec<f32>> = (0..2).map(|_| rng.signed_vec(n * classes)).collect();
        let cfg = (classes, [10.0, 10.0, 5.0, 5.0], 3);
        let loss = |codes: &[Vec<f32>], logits: &[Vec<f32>]| {
            let c: Vec<&[f32]> = codes.iter().map(|v| &v[..]).collect();
            let l: Vec<&[f32]> = logits.iter().map(|v| &v[..]).collect();
            let mut dc = vec![vec![0.0; n * 4]; 2];
            let mut dl = vec![vec![0.0; n * classes]; 2];
            let mut dcr: Vec<&mut [f32]> = dc.iter_mut().map(|v| &mut v[..]).collect();
            let mut dlr: Vec<&mut [f32]> = dl.iter_mut().map(|v| &mut v[..]).collect();
            let s = ssd_loss(
                &anchors, &c, &l, &targets, &matches, cfg, &mut dcr, &mut dlr,
            );
            (s.total(), dc, dl)
        };
        let (_, dc, dl) = loss(&codes, &logits);
        let h = 1e-3f32;
        for i in 0..2 {
            for j in 0..n * 4 {
                let keep = codes[i][j];
                codes[i][j] = keep + h;
                let up = loss(&codes, &logits).0;
                codes[i][j] = keep - h;
                let down = loss(&codes, &logits).0;
                codes[i][j] = keep;
                let fd = (up - down) / (2.0 * h as f64);
                assert!(
                    (fd - dc[i][j] as f64).abs() < 2e-3,
                    "code {i} {j}: {fd} vs {}",
                    dc[i][j]
                );
            }
            for j in 0..n * classes {
                let keep = logits[i][j];
                logits[i][j] = keep + h;
                let up = loss(&codes, &logits).0;
                logits[i][j] = keep - h;
                let down = loss(&codes, &logits).0;
                logits[i][j] = keep;
                let fd = (up - down) / (2.0 * h as f64);
                assert!(
                    (fd - dl[i][j] as f64).abs() < 2e-3,
                    "logit {i} {j}: {fd} vs {}",
                    dl[i][j]
                );
            }
        }
    }
}
