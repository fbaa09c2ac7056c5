//! A detection data set for training (images and their objects from COCO annotations) and
//! SSD's augmentation: photometric changes, a random crop that keeps objects, a flip, then
//! the detector's fit to its input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::loss::Targets;
use crate::detect::{fit, CocoDataset, DetectorConfig, Fit};
use crate::error::ImageError;
use crate::preprocess::load_image;
use crate::Rng;

/// Most decoded RGB bytes kept in memory between epochs (larger sets decode every time).
const CACHE_BYTES: u64 = 2 << 30;

/// One image and its objects in pixels (`[x, y, width, height]`, class 1-based).
#[derive(Clone, Debug)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// Objects.
    pub boxes: Vec<[f64; 4]>,
    /// Their classes.
    pub classes: Vec<usize>,
}

/// Images with objects, and the class names (class `k` is `labels[k − 1]`).
#[derive(Clone, Debug)]
pub struct DetectionData {
    /// The samples, in the annotations' order.
    pub samples: Vec<Sample>,
    /// Class names.
    pub labels: Vec<String>,
    cache: Vec<Option<RgbImage>>,
    /// Bytes held by `cache`.
    cached_bytes: u64,
}

impl DetectionData {
    /// The images of COCO annotations under `images`: classes are the categories in id order;
    /// crowd regions are left out (SSD trains on single objects).
    pub fn from_coco(data: &CocoDataset, images: &Path) -> DetectionData {
        let mut categories: Vec<(u64, String)> = data
            .categories
            .iter()
            .map(|c| (c.id, c.name.clone()))
            .collect();
        categories.sort();
        let class_of = |id: u64| categories.iter().position(|c| c.0 == id).map(|i| i + 1);
        // Objects by image in one pass (COCO train2017: 860k objects over 118k images).
        let mut objects: HashMap<u64, Vec<([f64; 4], usize)>> = HashMap::new();
        for a in data.annotations.iter().filter(|a| !a.iscrowd) {
            if let Some(c) = class_of(a.category_id) {
                objects.entry(a.image_id).or_default().push((a.bbox, c));
            }
        }
        let samples = data
            .images
            .iter()
            .map(|img| {
                let objects = objects.remove(&img.id).unwrap_or_default();
                Sample {
                    path: images.join(&img.file_name),
                    boxes: objects.iter().map(|o| o.0).collect(),
                    classes: objects.iter().map(|o| o.1).collect(),
                }
            })
            .collect();
        DetectionData {
            cache: vec![None; data.images.len()],
            cached_bytes: 0,
            samples,
            labels: categories.into_iter().map(|c| c.1).collect(),
        }
    }

    /// Decodes sample `i` (kept in memory while the decoded set stays under 2 GB).
    ///
    /// # Errors
    ///
    /// The image cannot be read or decoded.
    pub fn image(&mut self, i: usize) -> Result<RgbImage, ImageError> {
        if let Some(img) = &self.cache[i] {
            return Ok(img.clone());
        }
        let img = load_image(&self.samples[i].path)?;
        let bytes = img.as_raw().len() as u64;
        if self.cached_bytes + bytes <= CACHE_BYTES {
            self.cached_bytes += bytes;
            self.cache[i] = Some(img.clone());
        }
        Ok(img)
    }
}

/// Writes the network input of sample `img` with objects `(boxes, classes)` into `out` and
/// returns the objects relative to the input; with `augment`, SSD's augmentation first.
pub fn prepare(
    img: &RgbImage,
    sample: &Sample,
    config: &DetectorConfig,
    augment: Option<&mut Rng>,
    out: &mut [f32],
) -> Targets {
    let augmented;
    let (img, boxes, classes) = match augment {
        None => (img, sample.boxes.clone(), sample.classes.clone()),
        Some(rng) => {
            let mut copy = img.clone();
            photometric(&mut copy, rng);
            let (mut cropped, mut boxes, classes) =
                random_crop(&copy, &sample.boxes, &sample.classes, rng);
            if rng.uniform() < 0.5 {
                image::imageops::flip_horizontal_in_place(&mut cropped);
                let w = cropped.width() as f64;
                for b in &mut boxes {
                    b[0] = w - b[0] - b[2];
                }
            }
            augmented = cropped;
            (&augmented, boxes, classes)
        }
    };
    fit(img, config, out);
    let (w, h) = (img.width() as f64, img.height() as f64);
    let (sx, sy) = match config.fit {
        Fit::Stretch => (w, h),
        Fit::PadBottomRight => (w.max(h), w.max(h)),
    };
    Targets {
        boxes: boxes
            .iter()
            .map(|b| {
                [
                    (b[1] / sy) as f32,
                    (b[0] / sx) as f32,
                    ((b[1] + b[3]) / sy) as f32,
                    ((b[0] + b[2]) / sx) as f32,
                ]
            })
            .collect(),
        classes,
    }
}

/// Brightness (±32), contrast and saturation (×0.5–1.5), each with probability ½.
fn photometric(img: &mut RgbImage, rng: &mut Rng) {
    let brightness = (rng.uniform() < 0.5).then(|| (rng.uniform() * 2.0 - 1.0) * 32.0);
    let contrast = (rng.uniform() < 0.5).then(|| 0.5 + rng.uniform());
    let saturation = (rng.uniform() < 0.5).then(|| 0.5 + rng.uniform());
    if brightness.is_none() && contrast.is_none() && saturation.is_none() {
        return;
    }
    for p in img.pixels_mut() {
        let mut v = p.0.map(|c| c as f32);
        if let Some(b) = brightness {
            v = v.map(|c| c + b);
        }
        if let Some(c) = contrast {
            v = v.map(|x| (x - 128.0) * c + 128.0);
        }
        if let Some(s) = saturation {
            let gray = 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
            v = v.map(|x| gray + (x - gray) * s);
        }
        p.0 = v.map(|x| x.round().clamp(0.0, 255.0) as u8);
    }
}

/// Intersection over union of two `[x, y, w, h]` boxes.
fn iou_xywh(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let iw = ((a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0])).max(0.0);
    let ih = ((a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / (a[2] * a[3] + b[2] * b[3] - inter)
}

/// SSD's crop: with a minimum overlap drawn from {none, 0.1, 0.3, 0.5, 0.7, 0.9} (or the whole
/// image), up to 50 tries of a crop of 30–100% of each side with aspect 0.5–2 that overlaps
/// some object by that much; objects whose centre is inside are kept, clipped.
fn random_crop(
    img: &RgbImage,
    boxes: &[[f64; 4]],
    classes: &[usize],
    rng: &mut Rng,
) -> (RgbImage, Vec<[f64; 4]>, Vec<usize>) {
    let whole = || (img.clone(), boxes.to_vec(), classes.to_vec());
    const CHOICES: [Option<f64>; 7] = [
        None,
        Some(0.0),
        Some(0.1),
        Some(0.3),
        Some(0.5),
        Some(0.7),
        Some(0.9),
    ];
    let Some(min_iou) = CHOICES[rng.below(CHOICES.len())] else {
        return whole();
    };
    let (w, h) = (img.width() as f64, img.height() as f64);
    for _ in 0..50 {
        let cw = w * (0.3 + 0.7 * rng.uniform() as f64);
        let ch = h * (0.3 + 0.7 * rng.uniform() as f64);
        if !(0.5..=2.0).contains(&(cw / ch)) {
            continue;
        }
        let cx = (w - cw) * rng.uniform() as f64;
        let cy = (h - ch) * rng.uniform() as f64;
        let crop = [cx, cy, cw, ch];
        if !boxes.is_empty() && boxes.iter().all(|b| iou_xywh(b, &crop) < min_iou) {
            continue;
        }
        let mut kept = Vec::new();
        let mut kept_classes = Vec::new();
        for (b, &c) in boxes.iter().zip(classes) {
            let (mx, my) = (b[0] + b[2] / 2.0, b[1] + b[3] / 2.0);
            if mx <= cx || my <= cy || mx >= cx + cw || my >= cy + ch {
                continue;
            }
            let x0 = b[0].max(cx) - cx;
            let y0 = b[1].max(cy) - cy;
            let x1 = (b[0] + b[2]).min(cx + cw) - cx;
            let y1 = (b[1] + b[3]).min(cy + ch) - cy;
            kept.push([x0, y0, x1 - x0, y1 - y0]);
            kept_classes.push(c);
        }
        if kept.is_empty() && !boxes.is_empty() {
            continue;
        }
        let (px, py) = (cx.floor() as u32, cy.floor() as u32);
        let (pw, ph) = ((cw as u32).max(1), (ch as u32).max(1));
        let cropped = image::imageops::crop_imm(img, px, py, pw, ph).to_image();
        // Boxes were clipped against the real-valued crop; shift them onto the pixel grid.
        let (dx, dy) = (cx - px as f64, cy - py as f64);
        for b in &mut kept {
            b[0] += dx;
            b[1] += dy;
        }
        return (cropped, kept, kept_classes);
    }
    whole()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Crops keep only objects whose centre they contain, clipped inside the crop; the flip
    /// mirrors boxes; targets are relative to the input.
    #[test]
    fn augmentation_keeps_boxes_on_their_objects() {
        // A 200×100 image, black but for a white 40×20 object at (30, 40).
        let mut img = RgbImage::new(200, 100);
        for y in 40..60 {
            for x in 30..70 {
                img.put_pixel(x, y, image::Rgb([255, 255, 255]));
            }
        }
        let sample = Sample {
            path: "x.png".into(),
            boxes: vec![[30.0, 40.0, 40.0, 20.0]],
            classes: vec![1],
        };
        let mut config = DetectorConfig::ssd300(2, vec!["thing".into()]);
        config.input = 64;
        let mut out = vec![0.0; 64 * 64 * 3];
        let plain = prepare(&img, &sample, &config, None, &mut out);
        assert_eq!(plain.boxes, vec![[0.4, 0.15, 0.6, 0.35]]);
        let mut rng = Rng::new(4);
        for _ in 0..50 {
            let t = prepare(&img, &sample, &config, Some(&mut rng), &mut out);
            for b in &t.boxes {
                assert!(b.iter().all(|v| (-1e-6..=1.0 + 1e-6).contains(v)), "{b:?}");
                // The box still covers bright pixels: the input at its centre is white-ish
                // (photometric changes aside, above the black background's −1).
                let (cy, cx) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
                let (py, px) = ((cy * 64.0) as usize, (cx * 64.0) as usize);
                assert!(
                    out[(py * 64 + px) * 3] > -0.5,
                    "box {b:?} not on the object"
                );
            }
        }
    }
}
