//! `mobilenet bench`: latency, throughput and memory of the f32 engine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, ValueEnum};
use mobilenet::import::{import, ImportOptions};
use mobilenet::quantized::{AnyModel, QuantizedModel};
use mobilenet::{Fusion, InferenceModel, MobileNetConfig, ModelFile, Preset};
use mobilenet_kernels::Isa;
use serde::Serialize;

use crate::table::{thousands, Align, Table};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Benchmark a preset with random weights (default 1.0_224)
    #[arg(long, conflicts_with = "model")]
    preset: Option<Preset>,
    /// Benchmark a model file; for a quantized .tflite, the integer engine next to the f32
    /// engine on the same weights dequantized
    #[arg(long)]
    model: Option<PathBuf>,
    /// Images per forward pass
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Worker threads (default: all cores)
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Timed runs (after warm-up)
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Untimed warm-up runs
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Time per layer and per layer kind
    #[arg(long)]
    profile: bool,
    /// One JSON object on stdout
    #[arg(long)]
    json: bool,
    /// Which layers run together: none (every layer on its own), separable (depthwise +
    /// pointwise pairs band by band), pipeline (also the stem and the early pairs as one row
    /// pipeline)
    #[arg(long, value_enum, default_value_t = FusionArg::Pipeline)]
    fusion: FusionArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FusionArg {
    None,
    Separable,
    Pipeline,
}

#[derive(Serialize)]
struct BenchJson {
    model: String,
    isa: String,
    batch: usize,
    threads: usize,
    runs: usize,
    median_ms: f64,
    p10_ms: f64,
    p90_ms: f64,
    min_ms: f64,
    images_per_s: f64,
    gflops: f64,
    peak_rss_mb: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    layers: Vec<LayerJson>,
}

#[derive(Serialize)]
struct LayerJson {
    name: String,
    /// conv, depthwise, pointwise, avgpool, fc; dw+pw for a fused depthwise + pointwise pair,
    /// pipeline for the leading layers run as a row pipeline.
    kind: &'static str,
    ms: f64,
    gflops: f64,
}

/// Peak resident set size of this process, from /proc (Linux only).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let (file, name) = match (&args.model, args.preset) {
        (Some(path), _) => match AnyModel::load(path)? {
            AnyModel::Quantized(q) => return run_quantized(args, path, q),
            AnyModel::Float(file) => (file, path.display().to_string()),
        },
        (None, preset) => {
            let preset = preset.unwrap_or(Preset {
                alpha: 1.0,
                resolution: 224,
            });
            let config = MobileNetConfig::from_preset(preset)?;
            (
                ModelFile::random(config, 20170417),
                format!("{preset} (random weights)"),
            )
        }
    };
    let fusion = match args.fusion {
        FusionArg::None => Fusion::None,
        FusionArg::Separable => Fusion::Separable,
        FusionArg::Pipeline => Fusion::Pipeline,
    };
    let model = InferenceModel::with_options(&file, Isa::detect(), fusion);
    drop(file);
    let batch = args.batch.max(1);
    let mut session = model.session(batch, args.threads);
    let input: Vec<f32> = (0..batch * model.input_len())
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    for _ in 0..args.warmup {
        session.run(&input);
    }
    if args.profile {
        session.enable_profiling();
    }
    let runs = args.runs.max(1);
    let times = time_runs(0, runs, || {
        std::hint::black_box(session.run(&input));
    });
    let pct = |p: f64| percentile(&times, p);
    let median = pct(0.5);
    let macs: u64 = model.layers().iter().map(|l| l.mult_adds).sum();
    let flops = 2.0 * macs as f64 * batch as f64;
    let result = BenchJson {
        model: name,
        isa: model.isa().to_string(),
        batch,
        threads: session.threads(),
        runs,
        median_ms: ms(median),
        p10_ms: ms(pct(0.1)),
        p90_ms: ms(pct(0.9)),
        min_ms: ms(times[0]),
        images_per_s: batch as f64 / median.as_secs_f64(),
        gflops: flops / median.as_secs_f64() / 1e9,
        peak_rss_mb: peak_rss_mb(),
        layers: session
            .profile()
            .map(|p| {
                model
                    .layers()
                    .iter()
                    .zip(p)
                    .map(|(l, t)| {
                        let per_run = t.as_secs_f64() / runs as f64;
                        LayerJson {
                            name: l.name.clone(),
                            kind: l.step_kind(),
                            ms: per_run * 1e3,
                            gflops: 2.0 * (l.mult_adds * batch as u64) as f64 / per_run / 1e9,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    println!(
        "{} — batch {batch}, {} thread(s), {}, {runs} runs after {} warm-up",
        result.model, result.threads, result.isa, args.warmup
    );
    println!(
        "latency  median {:.3} ms  (p10 {:.3}, p90 {:.3}, min {:.3})",
        result.median_ms, result.p10_ms, result.p90_ms, result.min_ms
    );
    println!(
        "throughput  {:.1} images/s, {:.1} GFLOP/s ({} Mult-Adds per image)",
        result.images_per_s,
        result.gflops,
        thousands(macs)
    );
    if let Some(rss) = result.peak_rss_mb {
        println!("peak memory  {rss:.1} MB resident");
    }
    if !result.layers.is_empty() {
        println!();
        let mut t = Table::new(&[
            ("layer", Align::Left),
            ("kind", Align::Left),
            ("ms", Align::Right),
            ("share", Align::Right),
            ("GFLOP/s", Align::Right),
        ]);
        let total: f64 = result.layers.iter().map(|l| l.ms).sum();
        for l in &result.layers {
            t.row([
                l.name.clone(),
                l.kind.to_string(),
                format!("{:.3}", l.ms),
                format!("{:.1}%", 100.0 * l.ms / total),
                format!("{:.1}", l.gflops),
            ]);
        }
        print!("{}", t.render());
        println!();
        let mut k = Table::new(&[
            ("kind", Align::Left),
            ("ms", Align::Right),
            ("share", Align::Right),
        ]);
        for kind in [
            "pipeline",
            "conv",
            "dw+pw",
            "depthwise",
            "pointwise",
            "avgpool",
            "fc",
        ] {
            let sum: f64 = result
                .layers
                .iter()
                .filter(|l| l.kind == kind)
                .map(|l| l.ms)
                .sum();
            if sum > 0.0 {
                let share = format!("{:.1}%", 100.0 * sum / total);
                k.row([kind.to_string(), format!("{sum:.3}"), share]);
            }
        }
        print!("{}", k.render());
    }
    Ok(())
}

/// The `p` quantile (0..=1) of sorted timings.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Sorted timings of `runs` calls of `f` after `warmup` untimed ones.
fn time_runs(warmup: usize, runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..warmup {
        f();
    }
    let mut t: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    t.sort();
    t
}

#[derive(Serialize)]
struct QuantBenchJson {
    model: String,
    precision: &'static str,
    isa: String,
    threads: usize,
    runs: usize,
    median_ms: f64,
    p10_ms: f64,
    p90_ms: f64,
    min_ms: f64,
    images_per_s: f64,
    f32_isa: String,
    f32_median_ms: f64,
    speedup_vs_f32: f64,
    peak_rss_mb: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    steps: Vec<StepJson>,
}

#[derive(Serialize)]
struct StepJson {
    name: String,
    ms: f64,
}

/// A quantized .tflite: the integer engine at batch 1, then the f32 engine on the same weights
/// dequantized, in the same process and run.
fn run_quantized(args: &BenchArgs, path: &std::path::Path, q: QuantizedModel) -> Result<()> {
    if args.batch > 1 {
        anyhow::bail!(
            "--batch {}: the integer engine runs one image at a time",
            args.batch
        );
    }
    let mut session = q.session(args.threads);
    let input: Vec<u8> = (0..q.engine().input_len())
        .map(|i| ((i * 7919) % 255) as u8)
        .collect();
    let times = time_runs(args.warmup, args.runs, || {
        std::hint::black_box(session.run(&input));
    });
    let steps = if args.profile {
        session.enable_profile();
        for _ in 0..args.runs.max(1) {
            session.run(&input);
        }
        let p = session
            .profile()
            .map(<[Duration]>::to_vec)
            .unwrap_or_default();
        q.engine()
            .step_names()
            .into_iter()
            .zip(p)
            .map(|(name, d)| StepJson {
                name,
                ms: ms(d) / args.runs.max(1) as f64,
            })
            .collect()
    } else {
        Vec::new()
    };
    drop(session);
    // The f32 engine on the dequantized weights.
    let (file, _) = import(path, &ImportOptions::default())?;
    let model = InferenceModel::new(&file);
    drop(file);
    let mut fs = model.session(1, args.threads);
    let xf: Vec<f32> = (0..model.input_len())
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    let ftimes = time_runs(args.warmup, args.runs, || {
        std::hint::black_box(fs.run(&xf));
    });
    let runs = times.len();
    let pct = percentile;
    let median = pct(&times, 0.5);
    let fmedian = pct(&ftimes, 0.5);
    let result = QuantBenchJson {
        model: path.display().to_string(),
        precision: if q.kind() == mobilenet::tflite::ElementType::I8 {
            "int8"
        } else {
            "uint8"
        },
        isa: q.engine().isa().to_string(),
        threads: fs.threads(),
        runs,
        median_ms: ms(median),
        p10_ms: ms(pct(&times, 0.1)),
        p90_ms: ms(pct(&times, 0.9)),
        min_ms: ms(times[0]),
        images_per_s: 1.0 / median.as_secs_f64(),
        f32_isa: model.isa().to_string(),
        f32_median_ms: ms(fmedian),
        speedup_vs_f32: fmedian.as_secs_f64() / median.as_secs_f64(),
        peak_rss_mb: peak_rss_mb(),
        steps,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    println!(
        "{} — {}, batch 1, {} thread(s), {runs} runs after {} warm-up",
        result.model, result.precision, result.threads, args.warmup
    );
    let int8_label = format!("{} ({})", result.precision, result.isa);
    let f32_label = format!("f32 ({})", result.f32_isa);
    let width = int8_label.len().max(f32_label.len());
    println!(
        "{int8_label:<width$}  median {:.3} ms  (p10 {:.3}, p90 {:.3}, min {:.3}), {:.1} images/s",
        result.median_ms, result.p10_ms, result.p90_ms, result.min_ms, result.images_per_s
    );
    println!(
        "{f32_label:<width$}  median {:.3} ms  (same weights dequantized)",
        result.f32_median_ms
    );
    println!(
        "{} is {:.2}x faster than f32",
        result.precision, result.speedup_vs_f32
    );
    if let Some(rss) = result.peak_rss_mb {
        println!("peak memory  {rss:.1} MB resident");
    }
    if !result.steps.is_empty() {
        println!();
        let mut t = Table::new(&[
            ("step", Align::Left),
            ("ms", Align::Right),
            ("share", Align::Right),
        ]);
        let total: f64 = result.steps.iter().map(|s| s.ms).sum();
        for s in &result.steps {
            t.row([
                s.name.clone(),
                format!("{:.3}", s.ms),
                format!("{:.1}%", 100.0 * s.ms / total),
            ]);
        }
        print!("{}", t.render());
    }
    Ok(())
}
