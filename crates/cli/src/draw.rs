//! Images with labelled boxes drawn on them (plotters on the decoded pixels; the embedded font).

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

/// A colour per box, cycling.
const COLORS: [RGBColor; 6] = [
    RGBColor(230, 25, 75),
    RGBColor(60, 180, 75),
    RGBColor(0, 130, 200),
    RGBColor(245, 130, 48),
    RGBColor(145, 30, 180),
    RGBColor(70, 240, 240),
];

/// Writes `img` with each `(label, score, [x, y, width, height])` drawn as a box and a caption
/// to `out` (PNG).
pub fn draw_detections(
    img: &image::RgbImage,
    boxes: &[(String, f32, [f64; 4])],
    out: &Path,
) -> Result<()> {
    crate::plot::register_font();
    let (w, h) = img.dimensions();
    let mut pixels = img.as_raw().clone();
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        let thick = (w.max(h) / 300).clamp(2, 6);
        let size = (w.max(h) / 40).clamp(12, 28) as i32;
        for (i, (label, score, [x, y, bw, bh])) in boxes.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let (x0, y0) = (*x as i32, *y as i32);
            let (x1, y1) = ((x + bw) as i32, (y + bh) as i32);
            root.draw(&Rectangle::new(
                [(x0, y0), (x1, y1)],
                color.stroke_width(thick),
            ))?;
            let caption = format!("{label} {score:.2}");
            let text_w = (caption.chars().count() as i32 * size * 11) / 20 + 6;
            // The caption sits above the box, or inside it at the top edge of the image.
            let ty = if y0 >= size + 2 { y0 - size - 2 } else { y0 };
            root.draw(&Rectangle::new(
                [(x0, ty), (x0 + text_w, ty + size + 2)],
                color.filled(),
            ))?;
            root.draw(&Text::new(
                caption,
                (x0 + 3, ty + 1),
                ("sans-serif", size).into_font().color(&WHITE),
            ))?;
        }
        root.present()?;
    }
    image::save_buffer(out, &pixels, w, h, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
