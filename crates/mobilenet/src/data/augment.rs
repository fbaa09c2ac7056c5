//! The paper's light augmentation and the evaluation preprocessing.

use image::imageops::FilterType;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::preprocess::Preprocessing;
use crate::Rng;

/// Training-time augmentation. The paper uses "less regularization and data augmentation
/// techniques because small models have less trouble with overfitting": crops of limited scale
/// and horizontal flips, nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Augment {
    /// Evaluation preprocessing only (the model's central crop and resize).
    None,
    /// For small images (CIFAR): resize to the resolution, pad `pad` zero pixels on every side,
    /// take a random crop of the resolution, flip horizontally with probability ½.
    PadCropFlip {
        /// Padding in pixels.
        pad: u32,
    },
    /// For large images (ImageNet-like): a random crop covering `min_scale`..1 of the area with
    /// aspect ratio 3/4..4/3, resized to the resolution, flipped with probability ½.
    CropFlip {
        /// Smallest area fraction (Inception uses 0.08; the paper limits small crops).
        min_scale: f32,
    },
}

impl std::fmt::Display for Augment {
    /// In words: `none`, `4-pixel pad, crop and flip`, `crop of ≥ 35% and flip`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Augment::None => write!(f, "none"),
            Augment::PadCropFlip { pad } => write!(f, "{pad}-pixel pad, crop and flip"),
            Augment::CropFlip { min_scale } => {
                write!(f, "crop of ≥ {:.0}% and flip", 100.0 * min_scale)
            }
        }
    }
}

impl Augment {
    /// The default for a given input resolution: pad-crop-flip (pad res/8) up to 64 pixels,
    /// crop-flip with a minimum area of 35% above.
    pub fn default_for(resolution: usize) -> Augment {
        if resolution <= 64 {
            Augment::PadCropFlip {
                pad: (resolution / 8).max(1) as u32,
            }
        } else {
            Augment::CropFlip { min_scale: 0.35 }
        }
    }
}

/// Writes `res² · 3` network inputs for `img` into `out`: augmented with `rng` when `augment`
/// is not `None`, else the model's evaluation preprocessing.
pub fn prepare(
    img: &RgbImage,
    res: usize,
    augment: Augment,
    rng: &mut Rng,
    pre: &Preprocessing,
    out: &mut [f32],
) {
    let r = res as u32;
    let (scale, offset) = pre.norm.affine();
    match augment {
        Augment::None => pre.apply(img, res, out),
        Augment::PadCropFlip { pad } => {
            let resized;
            let src = if img.dimensions() == (r, r) {
                img
            } else {
                resized = image::imageops::resize(img, r, r, FilterType::Triangle);
                &resized
            };
            let dy = rng.below(2 * pad as usize + 1) as i64 - pad as i64;
            let dx = rng.below(2 * pad as usize + 1) as i64 - pad as i64;
            let flip = rng.uniform() < 0.5;
            for y in 0..r {
                for x in 0..r {
                    let xs = if flip { r - 1 - x } else { x } as i64 + dx;
                    let ys = y as i64 + dy;
                    let px = if xs < 0 || ys < 0 || xs >= r as i64 || ys >= r as i64 {
                        [0, 0, 0]
                    } else {
                        src.get_pixel(xs as u32, ys as u32).0
                    };
                    let o = &mut out[((y * r + x) * 3) as usize..][..3];
                    for c in 0..3 {
                        o[c] = px[c] as f32 * scale[c] + offset[c];
                    }
                }
            }
        }
        Augment::CropFlip { min_scale } => {
            let (w, h) = img.dimensions();
            let area = (w * h) as f32;
            let mut crop = (0, 0, w, h);
            for _ in 0..10 {
                let target = area * (min_scale + (1.0 - min_scale) * rng.uniform());
                let log_ratio =
                    (0.75f32).ln() + rng.uniform() * ((4.0f32 / 3.0).ln() - (0.75f32).ln());
                let ratio = log_ratio.exp();
                let cw = (target * ratio).sqrt().round() as u32;
                let ch = (target / ratio).sqrt().round() as u32;
                if cw >= 1 && ch >= 1 && cw <= w && ch <= h {
                    let x0 = rng.below((w - cw + 1) as usize) as u32;
                    let y0 = rng.below((h - ch + 1) as usize) as u32;
                    crop = (x0, y0, cw, ch);
                    break;
                }
            }
            let view = image::imageops::crop_imm(img, crop.0, crop.1, crop.2, crop.3).to_image();
            let mut resized = image::imageops::resize(&view, r, r, FilterType::Triangle);
            if rng.uniform() < 0.5 {
                image::imageops::flip_horizontal_in_place(&mut resized);
            }
            for (o, px) in out.chunks_exact_mut(3).zip(resized.pixels()) {
                for c in 0..3 {
                    o[c] = px.0[c] as f32 * scale[c] + offset[c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::PixelNorm;

    fn pre() -> Preprocessing {
        Preprocessing {
            crop: 1.0,
            norm: PixelNorm::Unit,
        }
    }

    #[test]
    fn pad_crop_flip_moves_and_mirrors_but_keeps_content() {
        let img = RgbImage::from_fn(8, 8, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 30) as u8, 200])
        });
        let mut seen_flip = false;
        let mut seen_shift = false;
        for seed in 0..40 {
            let mut out = vec![0.0; 8 * 8 * 3];
            prepare(
                &img,
                8,
                Augment::PadCropFlip { pad: 1 },
                &mut Rng::new(seed),
                &pre(),
                &mut out,
            );
            // Every pixel is an original pixel or the black padding.
            for p in out.chunks(3) {
                assert!(p[2] == 0.0 || (p[2] - 200.0 / 255.0).abs() < 1e-6);
            }
            let center = &out[(4 * 8 + 4) * 3..][..3];
            seen_flip |=
                (center[0] - 90.0 / 255.0).abs() < 1e-6 || (center[0] - 60.0 / 255.0).abs() < 1e-6;
            seen_shift |= (center[1] - 120.0 / 255.0).abs() > 1e-6;
        }
        assert!(seen_flip && seen_shift);
    }

    #[test]
    fn crop_flip_gives_the_resolution_and_is_seeded() {
        let img = RgbImage::from_fn(100, 60, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut a = vec![0.0; 32 * 32 * 3];
        let mut b = vec![0.0; 32 * 32 * 3];
        let aug = Augment::CropFlip { min_scale: 0.35 };
        prepare(&img, 32, aug, &mut Rng::new(3), &pre(), &mut a);
        prepare(&img, 32, aug, &mut Rng::new(3), &pre(), &mut b);
        assert_eq!(a, b);
        assert!(a.chunks(3).all(|p| (p[2] - 7.0 / 255.0).abs() < 1e-6));
    }
}
