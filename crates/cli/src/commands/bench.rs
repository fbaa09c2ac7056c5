//! `mobilenet bench`: latency, throughput and memory of the f32 engine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, ValueEnum};
use mobilenet::detect::{AnyDetector, Detector, DetectorFile};
use mobilenet::import::{import, ImportOptions};
use mobilenet::int8::QuantizedModel;
use mobilenet::{AnyModel, Classifier, Fusion, InferenceModel, MobileNetConfig, ModelFile, Preset};
use serde::Serialize;

use crate::table::{thousands, Align, Table};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Benchmark a preset with random weights (default 1.0_224)
    #[arg(long, conflicts_with = "model")]
    preset: Option<Preset>,
    /// Benchmark an SSD detector with random weights: ssd300 or face (512×512); a detector
    /// file given to --model is benchmarked the same way
    #[arg(long, value_name = "NAME", conflicts_with_all = ["model", "preset"])]
    pub(crate) detector: Option<String>,
    /// For a detector: time the whole detection (resize, network, decoding, NMS) on this
    /// image too (default: a synthetic 640×480 image)
    #[arg(long, value_name = "PATH")]
    pub(crate) image: Option<PathBuf>,
    /// Benchmark a model file; for a quantized .tflite, the integer engine next to the f32
    /// engine on the same weights dequantized
    #[arg(long)]
    model: Option<PathBuf>,
    /// Images per forward pass
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: usize,
    /// Worker threads (default: all cores)
    #[arg(long, default_value_t = 0, value_parser = crate::threads_arg)]
    pub(crate) threads: usize,
    /// Timed runs (after warm-up)
    #[arg(long, default_value_t = 50, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub(crate) runs: usize,
    /// Untimed warm-up runs
    #[arg(long, default_value_t = 10, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_000_000))]
    pub(crate) warmup: usize,
    /// Time per layer and per layer kind
    #[arg(long)]
    pub(crate) profile: bool,
    /// One JSON object on stdout
    #[arg(long)]
    pub(crate) json: bool,
    /// Which layers run together: none (every layer on its own), separable (depthwise +
    /// pointwise pairs band by band), pipeline (also the stem and the early pairs as one row
    /// pipeline)
    #[arg(long, value_enum, default_value_t = FusionArg::Pipeline)]
    fusion: FusionArg,
    /// For a quantized .tflite: tflite (TFLite's fixed-point requantization, the bytes of its
    /// reference kernels) or xnnpack (XNNPACK's single-precision one: faster, the bytes of
    /// TFLite with its default XNNPACK delegate)
    #[arg(long, value_enum, default_value_t = crate::RequantArg::Tflite)]
    requant: crate::RequantArg,
    /// For a float model: f32, or bf16 (the 1×1 convolutions and classifier with bf16
    /// activations and weights summed in f32: about twice the multiply-adds per instruction,
    /// 8 significant bits; needs AVX512-BF16)
    #[arg(long, value_enum, default_value_t = crate::PrecisionArg::F32)]
    precision: crate::PrecisionArg,
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
pub(crate) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(name) = &args.detector {
        let config = super::arch_detector::named(name)?;
        let file = DetectorFile::random(config, 20170417)?;
        let mut detector = AnyDetector::Float(Detector::new(&file)?);
        detector.set_precision(args.precision.into(), Path::new(name.as_str()))?;
        return super::bench_detector::run(args, &detector, &format!("{name} (random weights)"));
    }
    if let Some(path) = &args.model {
        if mobilenet::detect::is_detector_file(path) {
            let file = super::detect::load_detector(path, args.precision)?;
            return super::bench_detector::run(args, &file, &path.display().to_string());
        }
    }
    let (file, name) = match (&args.model, args.preset) {
        (Some(path), _) => match AnyModel::load(path)? {
            AnyModel::Quantized(_) if args.precision != crate::PrecisionArg::F32 => {
                anyhow::bail!(
                    "--precision {}: {} is a quantized model; it runs in int8",
                    mobilenet::Precision::from(args.precision),
                    path.display()
                )
            }
            AnyModel::Quantized(mut q) => {
                q.set_requantization(args.requant.into())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                return run_quantized(args, path, *q);
            }
            AnyModel::Float(_) if args.requant != crate::RequantArg::Tflite => {
                anyhow::bail!(
                    "--requant xnnpack: {} is a float model; the requantization is for quantized .tflite files",
                    path.display()
                )
            }
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
    let mut model = InferenceModel::with_fusion(&file, fusion)?;
    model.set_precision(args.precision.into())?;
    drop(file);
    let batch = args.batch.max(1);
    let timed = time_model(&model, batch, args)?;
    let times = &timed.times;
    let runs = times.len();
    let pct = |p: f64| percentile(times, p);
    let median = pct(0.5);
    let steps = model.steps();
    let macs: u64 = steps.iter().map(|s| s.mult_adds).sum();
    let flops = 2.0 * macs as f64 * batch as f64;
    let result = BenchJson {
        model: name,
        isa: Classifier::isa(&model),
        batch,
        threads: timed.threads,
        runs,
        median_ms: ms(median),
        p10_ms: ms(pct(0.1)),
        p90_ms: ms(pct(0.9)),
        min_ms: ms(times[0]),
        images_per_s: batch as f64 / median.as_secs_f64(),
        gflops: flops / median.as_secs_f64() / 1e9,
        peak_rss_mb: peak_rss_mb(),
        layers: timed
            .profile
            .iter()
            .flat_map(|p| steps.iter().zip(p))
            .map(|(s, t)| {
                let per_run = t.as_secs_f64() / runs as f64;
                LayerJson {
                    name: s.name.clone(),
                    kind: s.kind,
                    ms: per_run * 1e3,
                    gflops: 2.0 * (s.mult_adds * batch as u64) as f64 / per_run / 1e9,
                }
            })
            .collect(),
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
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What [`time_model`] measured.
struct Timed {
    /// Sorted time per run.
    times: Vec<Duration>,
    threads: usize,
    /// Time per step summed over `runs` further runs, with `--profile`.
    profile: Option<Vec<Duration>>,
}

/// Times `model` on `batch` fixed images: `--warmup` untimed runs, `--runs` timed ones, and with
/// `--profile` as many again with the time per step recorded.
fn time_model(model: &dyn Classifier, batch: usize, args: &BenchArgs) -> Result<Timed> {
    let mut runner = model.try_runner(batch, args.threads)?;
    let pixels: Vec<u8> = (0..batch * model.pixels_len())
        .map(|i| ((i * 7919) % 255) as u8)
        .collect();
    runner.load(&pixels);
    for _ in 0..args.warmup {
        runner.run();
    }
    let mut times: Vec<Duration> = (0..args.runs.max(1))
        .map(|_| {
            let start = Instant::now();
            runner.run();
            start.elapsed()
        })
        .collect();
    times.sort();
    let profile = args.profile.then(|| {
        runner.enable_profiling();
        for _ in 0..args.runs.max(1) {
            runner.run();
        }
        runner.profile().unwrap_or_default()
    });
    Ok(Timed {
        times,
        threads: runner.threads(),
        profile,
    })
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
    let timed = time_model(&q, 1, args)?;
    let steps = match &timed.profile {
        Some(p) => q
            .steps()
            .into_iter()
            .zip(p)
            .map(|(s, d)| StepJson {
                name: s.name,
                ms: ms(*d) / args.runs.max(1) as f64,
            })
            .collect(),
        None => Vec::new(),
    };
    // The f32 engine on the dequantized weights.
    let (file, _) = import(path, &ImportOptions::default())?;
    let model = InferenceModel::new(&file)?;
    drop(file);
    let ftimed = time_model(&model, 1, args)?;
    let (times, ftimes) = (&timed.times, &ftimed.times);
    let runs = times.len();
    let pct = percentile;
    let median = pct(times, 0.5);
    let fmedian = pct(ftimes, 0.5);
    let result = QuantBenchJson {
        model: path.display().to_string(),
        precision: q.precision(),
        isa: Classifier::isa(&q),
        threads: ftimed.threads,
        runs,
        median_ms: ms(median),
        p10_ms: ms(pct(times, 0.1)),
        p90_ms: ms(pct(times, 0.9)),
        min_ms: ms(times[0]),
        images_per_s: 1.0 / median.as_secs_f64(),
        f32_isa: Classifier::isa(&model),
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
    if result.speedup_vs_f32 >= 1.0 {
        println!(
            "{} is {:.2}x faster than f32",
            result.precision, result.speedup_vs_f32
        );
    } else {
        // On CPUs without VNNI the integer kernels run a slower path than the f32 ones.
        println!(
            "{} is {:.2}x slower than f32 on this CPU",
            result.precision,
            1.0 / result.speedup_vs_f32
        );
    }
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
