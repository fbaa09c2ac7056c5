//! `mobilenet bench`: latency, throughput and memory of the f32 engine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use mobilenet::{Fusion, InferenceModel, MobileNetConfig, ModelFile, Preset};
use mobilenet_kernels::Isa;
use serde::Serialize;

use crate::table::{thousands, Align, Table};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Benchmark a preset with random weights (default 1.0_224)
    #[arg(long, conflicts_with = "model")]
    preset: Option<Preset>,
    /// Benchmark a model file
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
    /// Run every layer on its own instead of fusing depthwise+pointwise pairs (for comparison)
    #[arg(long)]
    no_fusion: bool,
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
    /// conv, depthwise, pointwise, avgpool, fc, or dw+pw for a fused depthwise + pointwise pair.
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
        (Some(path), _) => (ModelFile::load(path)?, path.display().to_string()),
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
    let fusion = if args.no_fusion {
        Fusion::None
    } else {
        Fusion::Separable
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
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(session.run(&input));
            start.elapsed()
        })
        .collect();
    times.sort();
    let pct = |p: f64| times[((runs - 1) as f64 * p).round() as usize];
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
                            kind: if l.fused { "dw+pw" } else { l.kind.name() },
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
        for kind in ["conv", "dw+pw", "depthwise", "pointwise", "avgpool", "fc"] {
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
