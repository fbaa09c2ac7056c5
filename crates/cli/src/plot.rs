//! PNG reports: training curves and confusion matrices (plotters, with an embedded font so
//! that no system font is needed).

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result};
use mobilenet::train::trainer::EpochMetrics;
use plotters::prelude::*;

/// DejaVu Sans (Bitstream Vera license, see assets/DejaVuSans-LICENSE.txt).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is a valid TrueType file; registration cannot fail for it.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Training and held-out loss (left) and accuracy (right) per epoch.
pub fn training_curves(path: &Path, history: &[EpochMetrics], title: &str) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 17))?;
    // The legend sits above the charts, outside the data.
    let (legend, root) = root.split_vertically(26);
    for (i, (label, color)) in [("training", BLUE), ("held-out", RED)]
        .into_iter()
        .enumerate()
    {
        let x = 470 + 140 * i as i32;
        legend.draw(&PathElement::new(
            vec![(x, 12), (x + 28, 12)],
            color.stroke_width(3),
        ))?;
        legend.draw(&Circle::new((x + 14, 12), 3, color.filled()))?;
        legend.draw(&Text::new(label, (x + 36, 4), ("sans-serif", 15)))?;
    }
    let (left, right) = root.split_horizontally(600);
    let epochs = history.len().max(1) as f32;
    let x_range = 0.5f32..epochs + 0.5;

    let max_loss = history
        .iter()
        .flat_map(|m| [m.train_loss, m.val_loss])
        .fold(0.0f32, f32::max)
        .max(0.1)
        * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .caption("loss", ("sans-serif", 18))
        .build_cartesian_2d(x_range.clone(), 0f32..max_loss)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("cross-entropy")
        .x_labels(history.len().clamp(2, 12) + 1)
        .x_label_formatter(&epoch_label)
        .label_style(("sans-serif", 14))
        .draw()?;
    series(&mut chart, history, |m| m.train_loss, BLUE)?;
    series(&mut chart, history, |m| m.val_loss, RED)?;

    let min_acc = history
        .iter()
        .flat_map(|m| [m.train_accuracy, m.val_accuracy])
        .fold(1.0f32, f32::min);
    let lo = ((min_acc * 10.0).floor() / 10.0).clamp(0.0, 0.9);
    let mut chart = ChartBuilder::on(&right)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .caption("top-1 accuracy", ("sans-serif", 18))
        .build_cartesian_2d(x_range, lo..1.0f32)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("accuracy")
        .x_labels(history.len().clamp(2, 12) + 1)
        .x_label_formatter(&epoch_label)
        .label_style(("sans-serif", 14))
        .draw()?;
    series(&mut chart, history, |m| m.train_accuracy, BLUE)?;
    series(&mut chart, history, |m| m.val_accuracy, RED)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Epochs are whole: ticks between them get no label.
fn epoch_label(x: &f32) -> String {
    if (x - x.round()).abs() < 1e-3 && *x >= 1.0 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

fn series<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf32, plotters::coord::types::RangedCoordf32>,
    >,
    history: &[EpochMetrics],
    value: impl Fn(&EpochMetrics) -> f32,
    color: RGBColor,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points: Vec<(f32, f32)> = history.iter().map(|m| (m.epoch as f32, value(m))).collect();
    line_with_points(chart, points, color)
}

/// A line through `points` with a dot on each.
fn line_with_points<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf32, plotters::coord::types::RangedCoordf32>,
    >,
    points: Vec<(f32, f32)>,
    color: RGBColor,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
    chart.draw_series(
        points
            .into_iter()
            .map(|p| Circle::new(p, 3, color.filled())),
    )?;
    Ok(())
}

/// A confusion matrix as a heat map: rows true classes, columns predictions, with a colour
/// scale. `normalize`: each row as fractions of its class (per-class recall on the diagonal),
/// else counts. Laid out for 2 to 1000 classes: names and numbers are written while the cells
/// are large enough to hold them.
pub fn confusion_matrix(
    path: &Path,
    classes: &[String],
    confusion: &[Vec<usize>],
    title: &str,
    normalize: bool,
) -> Result<()> {
    register_font();
    let k = classes.len().max(1);
    let cell = (800 / k).clamp(1, 60) as i32;
    let names = cell >= 8;
    // Room for the longest name (at most 18 characters are written).
    let longest = classes
        .iter()
        .map(|n| n.chars().count().min(18))
        .max()
        .unwrap_or(0);
    let label_w = match names {
        true => (longest as i32 * 9 + 15).clamp(40, 170),
        false => 40,
    };
    let (top, grid) = (label_w + 40, cell * k as i32);
    let bar_x = label_w + grid + 30;
    let width = (bar_x + 110).max(700) as u32;
    let height = (top + grid + 50) as u32;
    let values: Vec<Vec<f32>> = confusion
        .iter()
        .take(k)
        .map(|row| {
            let total = row.iter().sum::<usize>().max(1) as f32;
            row.iter()
                .take(k)
                .map(|&n| {
                    if normalize {
                        n as f32 / total
                    } else {
                        n as f32
                    }
                })
                .collect()
        })
        .collect();
    let max = match normalize {
        true => 1.0,
        false => values.iter().flatten().fold(1.0f32, |a, &v| a.max(v)),
    };
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    root.draw(&Text::new(title.to_string(), (10, 8), ("sans-serif", 18)))?;
    let font = ("sans-serif", (cell as f32 * 0.35).clamp(8.0, 14.0) as u32);
    let grid_font = ("sans-serif", 14);
    for (t, row) in values.iter().enumerate() {
        for (p, &v) in row.iter().enumerate() {
            let (x, y) = (label_w + p as i32 * cell, top + t as i32 * cell);
            let shade = heat(v / max);
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                shade.filled(),
            ))?;
            if v > 0.0 && cell >= 24 {
                let text = match normalize {
                    true => format!("{:.0}%", 100.0 * v),
                    false => format!("{v:.0}"),
                };
                let ink = if v / max > 0.6 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    text,
                    (x + 3, y + cell / 3),
                    font.into_font().color(&ink),
                ))?;
            }
        }
    }
    if names {
        for (i, name) in classes.iter().enumerate().take(k) {
            let name: String = name.chars().take(18).collect();
            let at = i as i32 * cell + cell / 3;
            root.draw(&Text::new(name.clone(), (5, top + at), font))?;
            let style = TextStyle::from(font.into_font()).transform(FontTransform::Rotate270);
            root.draw(&Text::new(name, (label_w + at, top - 5), style))?;
        }
    }
    root.draw(&Rectangle::new(
        [(label_w, top), (label_w + grid, top + grid)],
        BLACK.stroke_width(1),
    ))?;
    // The colour scale: from the largest value (top) to 0 (bottom).
    let steps = 100;
    for i in 0..steps {
        let v = 1.0 - i as f32 / steps as f32;
        let y0 = top + grid * i / steps;
        let y1 = top + grid * (i + 1) / steps;
        root.draw(&Rectangle::new(
            [(bar_x, y0), (bar_x + 18, y1.max(y0 + 1))],
            heat(v).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(bar_x, top), (bar_x + 18, top + grid)],
        BLACK.stroke_width(1),
    ))?;
    let scale = |v: f32| match normalize {
        true => format!("{:.0}%", 100.0 * v),
        false => format!("{v:.0}"),
    };
    root.draw(&Text::new(scale(max), (bar_x + 24, top), grid_font))?;
    root.draw(&Text::new(
        scale(0.0),
        (bar_x + 24, top + grid - 14),
        grid_font,
    ))?;
    let footer = match normalize {
        true => "rows: true class (each row sums to 100%), columns: predicted",
        false => "rows: true class, columns: predicted (counts)",
    };
    root.draw(&Text::new(footer, (10, height as i32 - 24), grid_font))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// White (0) through blue to dark blue (1).
fn heat(v: f32) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let lerp = |a: f32, b: f32| (a + (b - a) * v) as u8;
    RGBColor(lerp(255.0, 8.0), lerp(255.0, 48.0), lerp(255.0, 107.0))
}

/// A detector's training: loss per epoch (left) and COCO mAP / AP50 where evaluated (right).
pub fn detection_curves(
    path: &Path,
    history: &[mobilenet::train::ssd::SsdEpoch],
    title: &str,
) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&format!("{title}: training"), ("sans-serif", 17))?;
    let (left, right) = root.split_horizontally(600);
    let epochs = history.len().max(1) as f32;
    let losses: Vec<(f32, f32)> = history
        .iter()
        .map(|e| (e.epoch as f32, (e.loss_boxes + e.loss_classes) as f32))
        .collect();
    let evaluated: Vec<_> = history
        .iter()
        .filter_map(|e| Some((e.epoch as f32, e.map?, e.ap50?)))
        .collect();
    let maps: Vec<(f32, f32)> = evaluated.iter().map(|p| (p.0, p.1 as f32)).collect();
    let ap50: Vec<(f32, f32)> = evaluated.iter().map(|p| (p.0, p.2 as f32)).collect();
    let panels = [
        (&left, "loss (box + class)", vec![(losses, BLUE)]),
        (
            &right,
            "COCO mAP@[.5:.95] (red), AP50 (green)",
            vec![(maps, RED), (ap50, GREEN)],
        ),
    ];
    for (area, caption, lines) in panels {
        let top = lines
            .iter()
            .flat_map(|(l, _)| l.iter().map(|p| p.1))
            .fold(0.0f32, f32::max);
        let mut chart = ChartBuilder::on(area)
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .caption(caption, ("sans-serif", 15))
            .build_cartesian_2d(0.5f32..epochs + 0.5, 0f32..top.max(0.01) * 1.15)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_label_formatter(&epoch_label)
            .draw()?;
        for (points, color) in lines {
            line_with_points(&mut chart, points, color)?;
        }
    }
    root.present()?;
    Ok(())
}
