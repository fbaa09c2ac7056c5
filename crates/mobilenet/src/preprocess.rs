//! Image loading and the model's preprocessing: crop, resize, pixel normalisation.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use image::imageops::FilterType;
use image::{ImageDecoder, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::ImageError;

/// How 8-bit pixel values become network inputs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PixelNorm {
    /// `x / 127.5 − 1`, in [−1, 1] (TF-slim and Keras "tf" mode, Google's checkpoints).
    MinusOneToOne,
    /// `x / 255`, in [0, 1] (the Visual Wake Words model).
    Unit,
    /// `(x / 255 − mean) / std` per RGB channel (torchvision/timm style).
    MeanStd {
        /// Per-channel mean of `x / 255`.
        mean: [f32; 3],
        /// Per-channel standard deviation of `x / 255`.
        std: [f32; 3],
    },
}

impl PixelNorm {
    /// Scale and offset per channel: `input = x · scale[c] + offset[c]` for 8-bit `x`.
    pub fn affine(&self) -> ([f32; 3], [f32; 3]) {
        match *self {
            PixelNorm::MinusOneToOne => ([1.0 / 127.5; 3], [-1.0; 3]),
            PixelNorm::Unit => ([1.0 / 255.0; 3], [0.0; 3]),
            PixelNorm::MeanStd { mean, std } => {
                let scale = [0, 1, 2].map(|c| 1.0 / (255.0 * std[c]));
                let offset = [0, 1, 2].map(|c| -mean[c] / std[c]);
                (scale, offset)
            }
        }
    }
}

/// What a model does to an image before the network sees it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Fraction of the shorter side kept by the central crop (TF-slim evaluation: 0.875);
    /// 1.0 keeps the whole image.
    pub crop: f32,
    /// Pixel normalisation.
    pub norm: PixelNorm,
}

impl Default for Preprocessing {
    /// TF-slim's ImageNet evaluation: central crop of 87.5%, resize, scale to [−1, 1].
    fn default() -> Self {
        Preprocessing {
            crop: 0.875,
            norm: PixelNorm::MinusOneToOne,
        }
    }
}

impl std::fmt::Display for Preprocessing {
    /// `centre crop 87.5%, x/127.5 − 1` and the like, as reports print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "centre crop {}%, ", self.crop * 100.0)?;
        match self.norm {
            PixelNorm::MinusOneToOne => write!(f, "x/127.5 − 1"),
            PixelNorm::Unit => write!(f, "x/255"),
            PixelNorm::MeanStd { mean, std } => {
                write!(f, "(x/255 − mean)/std, mean {mean:?}, std {std:?}")
            }
        }
    }
}

/// Decodes an image file (JPEG, PNG, BMP, WebP) to 8-bit RGB; grayscale is replicated to
/// three channels and alpha is dropped.
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = crate::files::read_regular(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes, path)
}

/// Decodes an image file as [`load_image`] and calls `f` with it (to crop and resize it,
/// say) while the image counts against the decoding budget: however many threads call this,
/// the images they decode and hold take at most about [`DECODE_BUDGET`] bytes at once (one
/// image larger than that runs alone). `f` must not decode images itself.
pub fn load_image_with<T>(path: &Path, f: impl FnOnce(&RgbImage) -> T) -> Result<T, ImageError> {
    let bytes = crate::files::read_regular(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (img, _lease) = decode_leased(&bytes, path)?;
    Ok(f(&img))
}

/// Most pixels accepted by default (100 megapixels: 300 MB as RGB): a 1 MB PNG claiming
/// 16384² pixels took 1.85 GB to decode.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 100_000_000;

static MAX_IMAGE_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_IMAGE_PIXELS);

/// Sets the most pixels an image may have to be decoded, for the whole process (like PIL's
/// `Image.MAX_IMAGE_PIXELS`): larger images are refused from their header, before anything is
/// allocated for them.
pub fn set_max_image_pixels(pixels: u64) {
    MAX_IMAGE_PIXELS.store(pixels.max(1), Ordering::Relaxed);
}

/// The most pixels an image may have (see [`set_max_image_pixels`]).
pub fn max_image_pixels() -> u64 {
    MAX_IMAGE_PIXELS.load(Ordering::Relaxed)
}

/// Bytes that images being decoded (and held by [`load_image_with`]) may take at once, over
/// all threads: 8 threads each decoding a 100-megapixel image would otherwise need ~5 GB.
pub const DECODE_BUDGET: u64 = 1 << 30;

/// The budget and the bytes of it in use.
static BUDGET: (AtomicU64, Mutex<u64>, Condvar) =
    (AtomicU64::new(DECODE_BUDGET), Mutex::new(0), Condvar::new());

/// A share of the decoding budget, returned when dropped.
struct Lease(u64);

impl Lease {
    /// Waits until `bytes` (at most the whole budget) are free and takes them.
    fn take(bytes: u64) -> Lease {
        let (budget, used, freed) = &BUDGET;
        let budget = budget.load(Ordering::Relaxed);
        let want = bytes.min(budget);
        let mut used = used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + want > budget {
            used = freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += want;
        Lease(want)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (_, used, freed) = &BUDGET;
        *used.lock().unwrap_or_else(|e| e.into_inner()) -= self.0;
        freed.notify_all();
    }
}

/// Decodes an image held in memory (`path` is used in messages), as [`load_image`].
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<RgbImage, ImageError> {
    decode_leased(bytes, path).map(|(img, _)| img)
}

/// Decodes an image, holding a share of the decoding budget for its decoder's buffer and the
/// 8-bit RGB copy; the share stays taken while the returned lease lives.
fn decode_leased(bytes: &[u8], path: &Path) -> Result<(RgbImage, Lease), ImageError> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let max_pixels = max_image_pixels();
    let mut limits = image::Limits::default();
    // No side can be longer than the pixel count; the decoder's buffer (at most 8 bytes per
    // pixel, 16-bit RGBA) must fit.
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 30));
    reader.limits(limits);
    // The decoders' messages can end in a newline.
    let bad = |reason: String| ImageError::Decode {
        path: path.to_path_buf(),
        reason: reason.trim_end().to_string(),
    };
    let Some(format) = reader.format() else {
        return Err(bad("not a JPEG, PNG, BMP or WebP file".to_string()));
    };
    // The header's size, before anything is allocated for the pixels.
    let header = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (w, h) = header.into_dimensions().map_err(|e| bad(e.to_string()))?;
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        let count = |n: u64| match n {
            0..1_000_000 => format!("{n} pixels"),
            _ => format!("{:.0} megapixels", n as f64 / 1e6),
        };
        return Err(bad(format!(
            "{w}×{h} is {}; images up to {} are read (--max-image-pixels raises the limit)",
            count(pixels),
            count(max_pixels)
        )));
    }
    // The JPEG decoder fills a cut-off file with grey and reports success: a file without its
    // end-of-image marker is refused instead of classified or trained on.
    if format == image::ImageFormat::Jpeg && !has_jpeg_end(bytes) {
        return Err(bad("truncated JPEG (no end-of-image marker)".to_string()));
    }
    if pixels == 0 {
        return Err(bad("image has no pixels".to_string()));
    }
    let decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let lease = Lease::take(decoder.total_bytes() + 3 * pixels);
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?;
    Ok((img.into_rgb8(), lease))
}

/// Whether a JPEG ends with its end-of-image marker (`FF D9`), allowing for a little trailing
/// padding. In entropy-coded data `FF` is always followed by `00`, so `FF D9` is the marker.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

impl Preprocessing {
    /// The central crop resized to `resolution`², as 8-bit RGB (what a quantized model takes);
    /// `None` when `img` is already that image.
    pub fn pixels(&self, img: &RgbImage, resolution: usize) -> Option<RgbImage> {
        let res = resolution as u32;
        let (w, h) = img.dimensions();
        let fraction = self.crop.clamp(0.0, 1.0);
        let cropped;
        let src = if fraction < 1.0 {
            // TF's central_crop: the same fraction of each side, centred.
            let cw = ((w as f32 * fraction).round() as u32).max(1);
            let ch = ((h as f32 * fraction).round() as u32).max(1);
            cropped = image::imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
            Some(&cropped)
        } else {
            None
        };
        match src {
            Some(s) if s.dimensions() == (res, res) => Some(s.clone()),
            Some(s) => Some(image::imageops::resize(s, res, res, FilterType::Triangle)),
            None if img.dimensions() == (res, res) => None,
            None => Some(image::imageops::resize(img, res, res, FilterType::Triangle)),
        }
    }

    /// Central crop of `self.crop`, resize to `resolution`² (antialiased bilinear, like PIL's
    /// BILINEAR), normalise; writes `resolution² · 3` values (HWC) into `out`.
    ///
    /// An image already `resolution`² with `crop = 1.0` is used without resampling.
    pub fn apply(&self, img: &RgbImage, resolution: usize, out: &mut [f32]) {
        let resized = self.pixels(img, resolution);
        let src = resized.as_ref().unwrap_or(img);
        let (scale, offset) = self.norm.affine();
        for (o, px) in out.chunks_exact_mut(3).zip(src.pixels()) {
            for c in 0..3 {
                o[c] = px.0[c] as f32 * scale[c] + offset[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight threads decoding at once hold only as many images as the budget allows.
    #[test]
    fn the_decoding_budget_bounds_images_held_at_once() {
        let dir = std::env::temp_dir().join(format!("mobilenet-budget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("img.png");
        RgbImage::from_fn(500, 500, |x, y| image::Rgb([x as u8, y as u8, 9]))
            .save(&path)
            .expect("png");
        // One 500² RGB image takes 750 kB in the decoder and 750 kB as the RGB copy.
        let most_at_once = |budget: u64| {
            BUDGET.0.store(budget, Ordering::Relaxed);
            let (inside, most) = (AtomicU64::new(0), AtomicU64::new(0));
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        load_image_with(&path, |_| {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            inside.fetch_sub(1, Ordering::SeqCst);
                        })
                        .expect("decodes");
                    });
                }
            });
            most.load(Ordering::SeqCst)
        };
        let tight = most_at_once(2_000_000);
        let loose = most_at_once(100_000_000);
        BUDGET.0.store(DECODE_BUDGET, Ordering::Relaxed);
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(tight, 1, "a 2 MB budget holds one 1.5 MB image at a time");
        assert!(loose > 1, "a 100 MB budget lets threads overlap ({loose})");
    }

    #[test]
    fn norms_map_0_and_255_to_their_ranges() {
        for (norm, lo, hi) in [
            (PixelNorm::MinusOneToOne, -1.0, 1.0),
            (PixelNorm::Unit, 0.0, 1.0),
            (
                PixelNorm::MeanStd {
                    mean: [0.5; 3],
                    std: [0.5; 3],
                },
                -1.0,
                1.0,
            ),
        ] {
            let (s, o) = norm.affine();
            assert!((o[0] - lo).abs() < 1e-6 && (255.0 * s[0] + o[0] - hi).abs() < 1e-6);
        }
    }

    #[test]
    fn exact_size_without_crop_is_not_resampled() {
        let img = RgbImage::from_fn(4, 4, |x, y| image::Rgb([(x * 60) as u8, (y * 60) as u8, 7]));
        let p = Preprocessing {
            crop: 1.0,
            norm: PixelNorm::Unit,
        };
        let mut out = vec![0.0; 48];
        p.apply(&img, 4, &mut out);
        let unit = |x: f32| x * (1.0 / 255.0);
        assert_eq!(out[3 * 5], unit(60.0)); // pixel (1, 1), red
        assert_eq!(out[3 * 5 + 1], unit(60.0));
        assert_eq!(out[2], unit(7.0));
    }

    #[test]
    fn crop_and_resize_give_the_resolution() {
        let img = RgbImage::from_pixel(300, 200, image::Rgb([255, 0, 128]));
        let mut out = vec![f32::NAN; 32 * 32 * 3];
        Preprocessing::default().apply(&img, 32, &mut out);
        assert!(out.chunks(3).all(|p| p[0] == 1.0 && p[1] == -1.0));
    }
}
