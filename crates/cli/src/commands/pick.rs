//! `mobilenet pick`: every α × resolution timed on this machine with our engine, next to the
//! published ImageNet top-1 of Google's checkpoints (or the user's own accuracies): the Pareto
//! frontier, the most accurate model under a latency budget, and the paper's Figure 4/5
//! measured here as a PNG.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mobilenet::checkpoints::published;
use mobilenet::int8::{quantize, Calibrator, QuantizedModel};
use mobilenet::{format_alpha, Classifier, InferenceModel, MobileNetConfig, ModelFile};
use serde::Serialize;

use super::bench::ms;
use crate::table::{Align, Table};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    F32,
    Int8,
    Bf16,
    All,
}

#[derive(Debug, Args)]
pub struct PickArgs {
    /// Latency budget per batch, in milliseconds
    #[arg(long)]
    budget_ms: f64,
    /// Worker threads (default: all cores)
    #[arg(long, default_value_t = 0, value_parser = crate::threads_arg)]
    threads: usize,
    /// Images per forward pass
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    batch: usize,
    /// Which engines to time: f32, int8 (post-training quantized) or both (all); bf16 has no
    /// engine yet
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// More width multipliers to time, besides 0.25, 0.5, 0.75 and 1.0
    #[arg(long, value_delimiter = ',')]
    alpha: Vec<f64>,
    /// More resolutions to time, besides 128, 160, 192 and 224
    #[arg(long, value_delimiter = ',')]
    resolution: Vec<usize>,
    /// Timing per model, in seconds (after a short warm-up; at least 5 runs)
    #[arg(long, default_value_t = 1.0)]
    time_per_model: f64,
    /// Your own accuracies instead of ImageNet's: JSON {"0.5_160": 71.2, "0.5_160_int8": 70.8, …}
    /// (percent; e.g. from `eval --json` runs on your task)
    #[arg(long)]
    accuracy: Option<PathBuf>,
    /// Draw accuracy against measured latency (log scale) with the frontier and the budget
    #[arg(long, value_name = "PNG")]
    plot: Option<PathBuf>,
    /// One JSON object on stdout
    #[arg(long)]
    json: bool,
}

/// One timed model.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// `0.5_160` or `0.5_160_int8`.
    pub name: String,
    pub alpha: f64,
    pub resolution: usize,
    pub precision: &'static str,
    pub median_ms: f64,
    /// Top-1 percent (ImageNet's published value, or the user's), if known.
    pub accuracy: Option<f64>,
    pub frontier: bool,
}

#[derive(Serialize)]
struct PickJson<'a> {
    budget_ms: f64,
    batch: usize,
    threads: usize,
    accuracy_source: &'a str,
    models: &'a [Point],
    best: Option<&'a Point>,
}

/// Median time of `runs` of `model` on `batch` images within about `budget`.
fn time(model: &dyn Classifier, batch: usize, threads: usize, budget: Duration) -> Result<f64> {
    let mut runner = model.try_runner(batch, threads)?;
    let pixels: Vec<u8> = (0..batch * model.pixels_len())
        .map(|i| ((i * 7919) % 255) as u8)
        .collect();
    runner.load(&pixels);
    for _ in 0..3 {
        runner.run();
    }
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 5 || (start.elapsed() < budget && times.len() < 100_000) {
        let t = Instant::now();
        runner.run();
        times.push(t.elapsed());
    }
    times.sort();
    Ok(ms(times[times.len() / 2]))
}

/// The model at `alpha` and `res` quantized with a few synthetic calibration images (latency
/// does not depend on the weights' values).
fn quantized(file: &ModelFile) -> Result<QuantizedModel> {
    let mut cal = Calibrator::new(file)?;
    let images: Vec<f32> = (0..2 * cal.input_len())
        .map(|i| ((i * 37) % 255) as f32 / 127.5 - 1.0)
        .collect();
    cal.observe(&images, 0);
    let graph = quantize(file, &cal.finish())?;
    let bytes = mobilenet::tflite::write(&graph);
    Ok(QuantizedModel::from_bytes(&bytes, Path::new("<pick>"))?)
}

/// Marks the points no faster point beats in accuracy.
pub fn mark_frontier(points: &mut [Point]) {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| points[a].median_ms.total_cmp(&points[b].median_ms));
    let mut best = f64::NEG_INFINITY;
    for i in order {
        if let Some(a) = points[i].accuracy {
            if a > best {
                best = a;
                points[i].frontier = true;
            }
        }
    }
}

pub fn run(args: &PickArgs) -> Result<()> {
    if !(args.budget_ms > 0.0 && args.budget_ms.is_finite()) {
        bail!("--budget-ms {} must be a positive number", args.budget_ms);
    }
    if !(args.time_per_model > 0.0 && args.time_per_model <= 600.0) {
        bail!(
            "--time-per-model {} must be in (0, 600] seconds",
            args.time_per_model
        );
    }
    let user: Option<HashMap<String, f64>> = match &args.accuracy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let map: HashMap<String, f64> = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: expected a JSON object of model names to percentages, e.g. {{\"0.5_160\": 71.2}}",
                    path.display()
                )
            })?;
            if let Some((k, v)) = map.iter().find(|(_, v)| !(0.0..=100.0).contains(*v)) {
                bail!("{}: {k} has accuracy {v}, not a percentage", path.display());
            }
            Some(map)
        }
        None => None,
    };
    let mut alphas = vec![0.25, 0.5, 0.75, 1.0];
    alphas.extend(&args.alpha);
    alphas.dedup();
    let mut resolutions = vec![128, 160, 192, 224];
    resolutions.extend(&args.resolution);
    resolutions.sort_unstable();
    resolutions.dedup();
    let precisions: &[&'static str] = match args.precision {
        PrecisionArg::F32 => &["f32"],
        PrecisionArg::Int8 => &["int8"],
        PrecisionArg::All => &["f32", "int8"],
        PrecisionArg::Bf16 => bail!(
            "--precision bf16: the engine has no bf16 path yet (it needs AVX-512 BF16 or AMX kernels); time f32 and int8 with --precision all"
        ),
    };
    let mut configs = Vec::new();
    for &a in &alphas {
        for &r in &resolutions {
            let config = MobileNetConfig::new(a, r)
                .and_then(|c| c.with_classes(1001))
                .with_context(|| format!("α {a} at {r}×{r}"))?;
            configs.push((a, r, config));
        }
    }
    let total = configs.len() * precisions.len();
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64).with_style(
            ProgressStyle::with_template("timing {bar:30} {pos}/{len} models  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let budget = Duration::from_secs_f64(args.time_per_model);
    let mut points = Vec::with_capacity(total);
    let mut threads = 0;
    for (a, r, config) in configs {
        let file = ModelFile::random(config, 20170417);
        for &precision in precisions {
            let name = format!(
                "{}_{r}{}",
                format_alpha(a),
                if precision == "int8" { "_int8" } else { "" }
            );
            bar.set_message(name.clone());
            let median_ms = if precision == "int8" {
                let q = quantized(&file)?;
                threads = q.runner(1, args.threads).threads();
                time(&q, args.batch, args.threads, budget)?
            } else {
                let m = InferenceModel::new(&file)?;
                threads = m.runner(1, args.threads).threads();
                time(&m, args.batch, args.threads, budget)?
            };
            let accuracy = match &user {
                Some(map) => map.get(&name).copied(),
                None => published(a, r).map(|p| {
                    if precision == "int8" {
                        p.quant_top1
                    } else {
                        p.top1
                    }
                }),
            };
            points.push(Point {
                name,
                alpha: a,
                resolution: r,
                precision,
                median_ms,
                accuracy,
                frontier: false,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    mark_frontier(&mut points);
    let best = points
        .iter()
        .filter(|p| p.median_ms <= args.budget_ms && p.accuracy.is_some())
        .max_by(|a, b| {
            a.accuracy
                .partial_cmp(&b.accuracy)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    let source = if args.accuracy.is_some() {
        "user"
    } else {
        "ImageNet top-1 of Google's checkpoints (TF-slim mobilenet_v1.md; int8: its _quant models)"
    };
    if let Some(path) = &args.plot {
        frontier_plot(path, &points, args.budget_ms, args.batch, threads)?;
    }
    if args.json {
        let out = PickJson {
            budget_ms: args.budget_ms,
            batch: args.batch,
            threads,
            accuracy_source: source,
            models: &points,
            best,
        };
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted.sort_by(|a, b| a.median_ms.total_cmp(&b.median_ms));
    let mut t = Table::new(&[
        ("model", Align::Left),
        ("ms / batch", Align::Right),
        ("top-1 %", Align::Right),
        ("", Align::Left),
    ]);
    for p in sorted {
        let mut mark = String::new();
        if p.frontier {
            mark.push_str("frontier");
        }
        if p.median_ms > args.budget_ms {
            mark.push_str(if mark.is_empty() {
                "over budget"
            } else {
                ", over budget"
            });
        }
        t.row([
            p.name.clone(),
            format!("{:.3}", p.median_ms),
            p.accuracy.map_or("–".into(), |a| format!("{a:.1}")),
            mark,
        ]);
    }
    println!(
        "{} models timed at batch {} on {threads} thread(s); accuracy: {source}",
        points.len(),
        args.batch
    );
    print!("{}", t.render());
    match best {
        Some(p) => println!(
            "best under {} ms: {} ({:.3} ms, top-1 {:.1}%)",
            args.budget_ms,
            p.name,
            p.median_ms,
            p.accuracy.unwrap_or(0.0)
        ),
        None => println!(
            "no model with a known accuracy runs under {} ms here; the fastest takes {:.3} ms",
            args.budget_ms,
            points
                .iter()
                .map(|p| p.median_ms)
                .fold(f64::INFINITY, f64::min)
        ),
    }
    if let Some(path) = &args.plot {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Accuracy against latency on a log scale: every model labelled, the frontier joined, the
/// budget as a vertical line.
fn frontier_plot(
    path: &Path,
    points: &[Point],
    budget: f64,
    batch: usize,
    threads: usize,
) -> Result<()> {
    use plotters::prelude::*;
    crate::plot::register_font();
    let known: Vec<&Point> = points.iter().filter(|p| p.accuracy.is_some()).collect();
    if known.is_empty() {
        bail!("--plot: no model has an accuracy to plot");
    }
    let lo = known
        .iter()
        .map(|p| p.median_ms)
        .fold(f64::INFINITY, f64::min)
        .min(budget);
    let hi = known
        .iter()
        .map(|p| p.median_ms)
        .fold(0.0, f64::max)
        .max(budget);
    let acc = |p: &Point| p.accuracy.unwrap_or(0.0);
    let amin = known.iter().map(|p| acc(p)).fold(f64::INFINITY, f64::min);
    let amax = known
        .iter()
        .map(|p| acc(p))
        .fold(f64::NEG_INFINITY, f64::max);
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("MobileNet v1: top-1 against latency measured here (batch {batch}, {threads} thread(s))"),
            ("sans-serif", 20),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (lo * 0.7..hi * 1.4).log_scale(),
            (amin - 3.0).floor()..(amax + 3.0).ceil(),
        )?;
    chart
        .configure_mesh()
        .x_desc("median latency per batch (ms, log scale)")
        .y_desc("top-1 (%)")
        .x_labels(8)
        .x_label_formatter(&|v| {
            let text = format!("{v:.2}");
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        })
        .draw()?;
    let mut frontier: Vec<(f64, f64)> = known
        .iter()
        .filter(|p| p.frontier)
        .map(|p| (p.median_ms, acc(p)))
        .collect();
    frontier.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(frontier, BLUE.stroke_width(2)))?
        .label("Pareto frontier")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    let y0 = (amin - 3.0).floor();
    let y1 = (amax + 3.0).ceil();
    chart
        .draw_series(LineSeries::new(
            vec![(budget, y0), (budget, y1)],
            RED.stroke_width(2),
        ))?
        .label(format!("budget {budget} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    for p in &known {
        let color = if p.precision == "int8" {
            RGBColor(0, 130, 60)
        } else {
            BLACK
        };
        chart.draw_series(std::iter::once(Circle::new(
            (p.median_ms, acc(p)),
            4,
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            p.name.clone(),
            (p.median_ms, acc(p)),
            ("sans-serif", 13).into_font().color(&color),
        )))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
