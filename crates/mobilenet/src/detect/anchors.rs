//! Anchor boxes: the Object Detection API's multiple-grid generator for SSD.
//!
//! Map `i` of `n` gets the scale `s_i = min + (max − min)·i/(n − 1)` (and `s_n = 1`); at every
//! cell centre `((y + ½)/h, (x + ½)/w)` it places one box per aspect ratio `r`, of height
//! `s/√r` and width `s·√r`, plus one of ratio `interpolated_scale_aspect_ratio` at scale
//! `√(s_i·s_{i+1})`. Boxes are `[ymin, xmin, ymax, xmax]` relative to the input, not clipped;
//! they run map by map, then row, column and box.

use super::config::{AnchorConfig, InterpolatedPosition};

/// Anchors for maps of the given `(height, width)`, in prediction order.
pub fn generate(config: &AnchorConfig, grids: &[(usize, usize)]) -> Vec<[f32; 4]> {
    let n = grids.len();
    let scale = |i: usize| {
        if i >= n {
            1.0
        } else if n == 1 {
            config.min_scale
        } else {
            config.min_scale + (config.max_scale - config.min_scale) * i as f64 / (n - 1) as f64
        }
    };
    let mut anchors = Vec::new();
    for (i, &(h, w)) in grids.iter().enumerate() {
        let (s, next) = (scale(i), scale(i + 1));
        // (scale, aspect ratio) of each box at a position.
        let specs: Vec<(f64, f64)> = if i == 0 && config.reduce_boxes_in_lowest_layer {
            vec![(0.1, 1.0), (s, 2.0), (s, 0.5)]
        } else {
            let mut specs: Vec<(f64, f64)> = config.aspect_ratios.iter().map(|&r| (s, r)).collect();
            let ratio = config.interpolated_scale_aspect_ratio;
            if ratio > 0.0 {
                let extra = ((s * next).sqrt(), ratio);
                match config.interpolated_position {
                    InterpolatedPosition::Second => specs.insert(1.min(specs.len()), extra),
                    InterpolatedPosition::Last => specs.push(extra),
                }
            }
            specs
        };
        for y in 0..h {
            for x in 0..w {
                let cy = (y as f64 + 0.5) / h as f64;
                let cx = (x as f64 + 0.5) / w as f64;
                for &(scale, ratio) in &specs {
                    let (bh, bw) = (scale / ratio.sqrt(), scale * ratio.sqrt());
                    anchors.push([
                        (cy - bh / 2.0) as f32,
                        (cx - bw / 2.0) as f32,
                        (cy + bh / 2.0) as f32,
                        (cx + bw / 2.0) as f32,
                    ]);
                }
            }
        }
    }
    anchors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed: one 2×2 map with the lowest layer reduced, one 1×1 map, scales 0.2
    /// and 0.9 (the 1×1 map's interpolated box is at √(0.9 · 1)).
    #[test]
    fn small_grid_by_hand() {
        let config = AnchorConfig {
            min_scale: 0.2,
            max_scale: 0.9,
            aspect_ratios: vec![1.0, 4.0],
            interpolated_scale_aspect_ratio: 1.0,
            interpolated_position: InterpolatedPosition::Last,
            reduce_boxes_in_lowest_layer: true,
        };
        let a = generate(&config, &[(2, 2), (1, 1)]);
        assert_eq!(a.len(), 2 * 2 * 3 + 3);
        let close = |got: [f32; 4], want: [f64; 4]| {
            for k in 0..4 {
                assert!(
                    (got[k] as f64 - want[k]).abs() < 1e-6,
                    "{got:?} vs {want:?}"
                );
            }
        };
        // Cell (0, 0), centre (0.25, 0.25): scale 0.1 ratio 1, then 0.2 at ratios 2 and ½.
        close(a[0], [0.2, 0.2, 0.3, 0.3]);
        let (h, w) = (0.2 / 2f64.sqrt(), 0.2 * 2f64.sqrt());
        close(
            a[1],
            [
                0.25 - h / 2.0,
                0.25 - w / 2.0,
                0.25 + h / 2.0,
                0.25 + w / 2.0,
            ],
        );
        close(
            a[2],
            [
                0.25 - w / 2.0,
                0.25 - h / 2.0,
                0.25 + w / 2.0,
                0.25 + h / 2.0,
            ],
        );
        // Cell (0, 1) is next: centre x 0.75.
        close(a[3], [0.2, 0.7, 0.3, 0.8]);
        // The 1×1 map: 0.9 at ratio 1 and 4 (height 0.45, width 1.8), then √0.9 at ratio 1.
        close(a[12], [0.05, 0.05, 0.95, 0.95]);
        close(a[13], [0.275, -0.4, 0.725, 1.4]);
        let s = 0.9f64.sqrt();
        close(
            a[14],
            [0.5 - s / 2.0, 0.5 - s / 2.0, 0.5 + s / 2.0, 0.5 + s / 2.0],
        );
        // The older order puts the interpolated box second.
        let mut older = config.clone();
        older.interpolated_position = InterpolatedPosition::Second;
        let b = generate(&older, &[(2, 2), (1, 1)]);
        assert_eq!(&b[..12], &a[..12]);
        assert_eq!([b[12], b[13], b[14]], [a[12], a[14], a[13]]);
    }
}
