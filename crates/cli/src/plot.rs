//! PNG reports: training curves and confusion matrices (plotters, with an embedded font so
//! that no system font is needed).

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result};
use mobilenet::train::trainer::EpochMetrics;
use plotters::prelude::*;

/// DejaVu Sans (Bitstream Vera license, see assets/DejaVuSans-LICENSE.txt).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
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
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    series(&mut chart, history, |m| m.train_loss, BLUE, "training")?;
    series(&mut chart, history, |m| m.val_loss, RED, "held-out")?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;

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
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    series(&mut chart, history, |m| m.train_accuracy, BLUE, "training")?;
    series(&mut chart, history, |m| m.val_accuracy, RED, "held-out")?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
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
    label: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points: Vec<(f32, f32)> = history.iter().map(|m| (m.epoch as f32, value(m))).collect();
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(
        points
            .into_iter()
            .map(|p| Circle::new(p, 3, color.filled())),
    )?;
    Ok(())
}

/// A confusion matrix as a heat map: rows true classes, columns predictions, counts written in.
pub fn confusion_matrix(
    path: &Path,
    classes: &[String],
    confusion: &[Vec<usize>],
    title: &str,
) -> Result<()> {
    register_font();
    let k = classes.len();
    let cell = (600 / k.max(1)).clamp(12, 60) as u32;
    let label_w = 150u32;
    let size = (
        label_w + cell * k as u32 + 30,
        label_w + cell * k as u32 + 40,
    );
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    root.draw(&Text::new(title.to_string(), (10, 8), ("sans-serif", 18)))?;
    let max = confusion
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f32;
    let font = ("sans-serif", (cell as f32 * 0.35).clamp(8.0, 14.0) as u32);
    let top = label_w as i32;
    for (t, row) in confusion.iter().enumerate().take(k) {
        for (p, &n) in row.iter().enumerate().take(k) {
            let x = label_w as i32 + (p as u32 * cell) as i32;
            let y = top + (t as u32 * cell) as i32;
            let v = n as f32 / max;
            let shade = (255.0 * (1.0 - v)) as u8;
            let color = if t == p {
                RGBColor(shade, 255 - (255 - shade) / 3, shade)
            } else {
                RGBColor(255, shade, shade)
            };
            root.draw(&Rectangle::new(
                [(x, y), (x + cell as i32, y + cell as i32)],
                color.filled(),
            ))?;
            if n > 0 && cell >= 20 {
                root.draw(&Text::new(
                    n.to_string(),
                    (x + 3, y + cell as i32 / 3),
                    font,
                ))?;
            }
        }
        let name: String = classes[t].chars().take(18).collect();
        root.draw(&Text::new(
            name,
            (5, top + (t as u32 * cell) as i32 + cell as i32 / 3),
            font,
        ))?;
    }
    for (p, name) in classes.iter().enumerate() {
        let name: String = name.chars().take(18).collect();
        let x = label_w as i32 + (p as u32 * cell) as i32 + cell as i32 / 3;
        let style = TextStyle::from(font.into_font()).transform(FontTransform::Rotate270);
        root.draw(&Text::new(name, (x, label_w as i32 - 5), style))?;
    }
    root.draw(&Text::new(
        "rows: true class, columns: predicted".to_string(),
        (label_w as i32, size.1 as i32 - 25),
        font,
    ))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
