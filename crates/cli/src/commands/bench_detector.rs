//! `mobilenet bench` for an SSD detector: the network with box decoding, and the whole
//! detection of an image (fit to the input, network, decoding, NMS).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use mobilenet::detect::{AnyDetector, DetectSession};
use mobilenet::preprocess::load_image;
use serde::Serialize;

use super::bench::{ms, peak_rss_mb, percentile, BenchArgs};
use crate::table::{thousands, Align, Table};

#[derive(Serialize)]
struct DetectorBenchJson {
    model: String,
    detector: String,
    precision: String,
    input: usize,
    isa: String,
    threads: usize,
    runs: usize,
    /// Network, box decoding and scores of every anchor.
    network_median_ms: f64,
    network_min_ms: f64,
    /// Fit to the input, network, decoding, NMS (the image already decoded).
    detect_median_ms: f64,
    detect_min_ms: f64,
    image: [u32; 2],
    detections: usize,
    gflops: f64,
    mult_adds: u64,
    peak_rss_mb: Option<f64>,
}

/// Times `f` after `warmup` calls: sorted durations of `runs` calls.
fn time(warmup: usize, runs: usize, f: &mut dyn FnMut()) -> Vec<Duration> {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times
}

/// Network and whole-detection times of `session` on `input` and `img`, and the detections.
fn measure(
    args: &BenchArgs,
    session: &mut dyn DetectSession,
    input: &[f32],
    img: &image::RgbImage,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let runs = args.runs.max(1);
    let network = time(args.warmup, runs, &mut || {
        std::hint::black_box(session.run(input));
    });
    let mut found = 0;
    let detect = time(args.warmup.min(3), runs, &mut || {
        found = session.detect(img, None).0.len();
    });
    (network, detect, found)
}

pub fn run(args: &BenchArgs, detector: &AnyDetector, name: &str) -> Result<()> {
    if args.batch != 1 {
        bail!(
            "a detector runs one image at a time: --batch {} is not supported",
            args.batch
        );
    }
    let config = detector.config();
    let img = match &args.image {
        Some(path) => load_image(path)?,
        None => image::RgbImage::from_fn(640, 480, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        }),
    };
    let input: Vec<f32> = (0..config.input * config.input * 3)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    let runs = args.runs.max(1);
    // Per-step profile rows: (name, kind, total time over `runs` runs).
    let mut profile: Vec<(String, String, Duration)> = Vec::new();
    let (isa, threads, (network, detect, found)) = match detector {
        AnyDetector::Float(d) => {
            let mut session = d.session(args.threads);
            let threads = session.engine().threads();
            let timed = measure(args, &mut session, &input, &img);
            if args.profile {
                session.enable_profiling();
                for _ in 0..runs {
                    session.run(&input);
                }
                if let Some(p) = session.engine().profile() {
                    profile = d
                        .plan()
                        .layers()
                        .iter()
                        .zip(p)
                        .map(|(l, t)| (l.name.clone(), l.step_kind().to_string(), *t))
                        .collect();
                }
            }
            (mobilenet::Classifier::isa(d.plan()), threads, timed)
        }
        AnyDetector::Int8(d) => {
            let mut session = d.session(args.threads);
            let threads = session.engine().threads();
            let timed = measure(args, &mut session, &input, &img);
            if args.profile {
                session.engine().enable_profile();
                for _ in 0..runs {
                    session.run(&input);
                }
                if let Some(p) = session.engine().profile() {
                    profile = d
                        .engine()
                        .step_names()
                        .into_iter()
                        .zip(p)
                        .map(|(n, t)| (n, "int8".to_string(), *t))
                        .collect();
                }
            }
            (d.engine().isa().to_string(), threads, timed)
        }
    };
    let (_, total) = config.cost()?;
    let median = percentile(&network, 0.5);
    let result = DetectorBenchJson {
        model: name.to_string(),
        detector: config.name.clone(),
        precision: detector.precision().to_string(),
        input: config.input,
        isa,
        threads,
        runs,
        network_median_ms: ms(median),
        network_min_ms: ms(network[0]),
        detect_median_ms: ms(percentile(&detect, 0.5)),
        detect_min_ms: ms(detect[0]),
        image: [img.width(), img.height()],
        detections: found,
        gflops: 2.0 * total.mult_adds as f64 / median.as_secs_f64() / 1e9,
        mult_adds: total.mult_adds,
        peak_rss_mb: peak_rss_mb(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    println!(
        "{} — detector {} ({}) at {}×{}, {} thread(s), {}, {runs} runs after {} warm-up",
        result.model,
        result.detector,
        result.precision,
        result.input,
        result.input,
        threads,
        result.isa,
        args.warmup
    );
    println!(
        "network + box decoding  median {:.3} ms (min {:.3}), {:.1} G(FL)OP/s ({} Mult-Adds)",
        result.network_median_ms,
        result.network_min_ms,
        result.gflops,
        thousands(total.mult_adds)
    );
    println!(
        "whole detection of a {}×{} image (fit, network, decoding, NMS)  median {:.3} ms (min {:.3}), {} detections",
        img.width(),
        img.height(),
        result.detect_median_ms,
        result.detect_min_ms,
        found
    );
    if let Some(rss) = result.peak_rss_mb {
        println!("peak memory  {rss:.1} MB resident");
    }
    if !profile.is_empty() {
        let mut t = Table::new(&[
            ("step", Align::Left),
            ("kind", Align::Left),
            ("ms", Align::Right),
            ("share", Align::Right),
        ]);
        let total: f64 = profile.iter().map(|p| ms(p.2)).sum();
        for (step, kind, d) in &profile {
            t.row([
                step.clone(),
                kind.clone(),
                format!("{:.3}", ms(*d) / runs as f64),
                format!("{:.1}%", 100.0 * ms(*d) / total),
            ]);
        }
        println!("\nper step (a map's predictors are timed with the step that writes it):");
        print!("{}", t.render());
    }
    Ok(())
}
