//! Fitting an image to a detector's square input, and mapping boxes back to its pixels.

use image::RgbImage;

use super::config::{DetectorConfig, Fit};

/// How the input was made from an image: maps a box relative to the input back to the
/// image's pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frame {
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Relative x in the input to relative x in the image.
    x_factor: f64,
    /// The same for y.
    y_factor: f64,
}

impl Frame {
    /// `[x, y, width, height]` in image pixels of a relative `[ymin, xmin, ymax, xmax]` box,
    /// clipped to the image.
    pub fn to_pixels(&self, bbox: [f32; 4]) -> [f64; 4] {
        let clip = |v: f32| (v as f64).clamp(0.0, 1.0);
        let (top, bottom) = (clip(bbox[0]) * self.y_factor, clip(bbox[2]) * self.y_factor);
        let (left, right) = (clip(bbox[1]) * self.x_factor, clip(bbox[3]) * self.x_factor);
        let (w, h) = (self.width as f64, self.height as f64);
        [left * w, top * h, (right - left) * w, (bottom - top) * h]
    }
}

/// Writes the detector input for `img` into `out` (`input² · 3` values, NHWC) and returns how
/// to map boxes back.
///
/// Pixels are resampled as TensorFlow's `resize_bilinear` without half-pixel centres or
/// corner alignment (source = destination · in/out), the resize both face-api and the Object
/// Detection API use, in f64 then rounded; then `pixel · scale + offset` in f32.
///
/// # Panics
///
/// If `out` has the wrong length or the image is empty.
pub fn fit(img: &RgbImage, config: &DetectorConfig, out: &mut [f32]) -> Frame {
    let side = config.input;
    assert_eq!(out.len(), side * side * 3, "detector input size");
    let (w, h) = (img.width() as usize, img.height() as usize);
    assert!(w > 0 && h > 0, "empty image");
    // The source grid: the image padded to a square, or the image itself.
    let (src_w, src_h, frame) = match config.fit {
        Fit::PadBottomRight => {
            let longest = w.max(h);
            // face-api: the resized image's size is round(side · scale) on each axis, and a
            // relative box is scaled by side / that before it meets the image's size.
            let f = side as f64 / longest as f64;
            let frame = Frame {
                width: w,
                height: h,
                x_factor: side as f64 / (w as f64 * f).round().max(1.0),
                y_factor: side as f64 / (h as f64 * f).round().max(1.0),
            };
            (longest, longest, frame)
        }
        Fit::Stretch => (
            w,
            h,
            Frame {
                width: w,
                height: h,
                x_factor: 1.0,
                y_factor: 1.0,
            },
        ),
    };
    let raw = img.as_raw();
    // Source position of each output column and row: (first, second, weight of the second).
    let axis = |i: usize, src: usize| -> (usize, usize, f64) {
        let pos = i as f64 * (src as f64 / side as f64);
        let lo = pos.floor().max(0.0);
        let hi = (pos.ceil() as usize).min(src - 1);
        (lo as usize, hi, pos - lo)
    };
    let columns: Vec<(usize, usize, f64)> = (0..side).map(|x| axis(x, src_w)).collect();
    let black = [0u8; 3];
    // A pixel of the (padded) source: the padding is black.
    let pixel = |x: usize, y: usize| -> &[u8] {
        if x < w && y < h {
            &raw[(y * w + x) * 3..][..3]
        } else {
            &black
        }
    };
    for (y, row) in out.chunks_exact_mut(side * 3).enumerate() {
        let (y0, y1, fy) = axis(y, src_h);
        for (&(x0, x1, fx), px) in columns.iter().zip(row.chunks_exact_mut(3)) {
            let (tl, tr) = (pixel(x0, y0), pixel(x1, y0));
            let (bl, br) = (pixel(x0, y1), pixel(x1, y1));
            for c in 0..3 {
                let top = tl[c] as f64 + (tr[c] as f64 - tl[c] as f64) * fx;
                let bottom = bl[c] as f64 + (br[c] as f64 - bl[c] as f64) * fx;
                let v = (top + (bottom - top) * fy) as f32;
                px[c] = v * config.scale + config.offset;
            }
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×1 image padded to 2×2 and resized to 4×4: source = destination / 2, so columns
    /// and rows 0, 0.5, 1, 1.5 (the last clamps to 1); the padded row is black.
    #[test]
    fn pad_and_resize_by_hand() {
        let mut config = DetectorConfig::face_api();
        config.input = 4;
        config.scale = 1.0;
        config.offset = 0.0;
        let img = RgbImage::from_raw(2, 1, vec![0, 0, 0, 200, 100, 40]).expect("should succeed");
        let mut out = vec![0.0; 4 * 4 * 3];
        let frame = fit(&img, &config, &mut out);
        let red: Vec<f32> = out.iter().step_by(3).copied().collect();
        assert_eq!(
            red,
            [
                0.0, 100.0, 200.0, 200.0, // row 0
                0.0, 50.0, 100.0, 100.0, // row 0.5: half of the black padding
                0.0, 0.0, 0.0, 0.0, //
                0.0, 0.0, 0.0, 0.0
            ]
        );
        // The image fills the top half: a box over the input's top half is the whole image.
        assert_eq!(frame.to_pixels([0.0, 0.0, 0.5, 1.0]), [0.0, 0.0, 2.0, 1.0]);
        // Boxes are clipped to the input first.
        assert_eq!(
            frame.to_pixels([-0.5, -0.1, 0.25, 0.5]),
            [0.0, 0.0, 1.0, 0.5]
        );
    }
}
