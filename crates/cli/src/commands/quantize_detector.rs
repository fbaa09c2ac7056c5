//! `mobilenet quantize` for an SSD detector: calibrated on images fitted as `detect` fits
//! them, body, extra layers and predictors quantized to int8, and how closely the int8
//! detections follow float on the calibration images.

use anyhow::{bail, Context, Result};
use mobilenet::detect::{
    calibrator, fit, quantize_detector, Agreement, Detector, DetectorFile, QuantDetector,
};

use super::quantize::{calibrate, write_model, QuantizeArgs, Source};

/// Calibration images whose detections are compared, at most.
const COMPARED: usize = 64;

pub fn run(args: &QuantizeArgs) -> Result<()> {
    if args
        .model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tflite"))
    {
        bail!(
            "{}: this detector is already int8; quantize the float detector file it came from",
            args.model.display()
        );
    }
    if args.labels.is_some() {
        bail!("--labels: a detector file carries its own labels");
    }
    let file = DetectorFile::load(&args.model)?;
    let config = &file.config;
    let side = config.input;
    let source = Source::open(&args.calibration)?;
    let picks = source.picks(args.images);
    let mut cal = calibrator(&file)?;
    calibrate(
        &source,
        &picks,
        side * side * 3,
        &|img, x| {
            fit(img, config, x);
        },
        &mut cal,
        args,
    )?;
    let calibration = cal.finish();
    let graph = quantize_detector(&file, &calibration)?;
    let bytes = mobilenet::tflite::write(&graph);
    // Read what we wrote back through the same path `detect` uses, before writing it.
    let q = QuantDetector::from_bytes(&bytes, &args.output)
        .context("the quantized detector does not read back (a bug: please report it)")?;
    write_model(&args.output, &bytes)?;
    println!(
        "calibrated on {} image(s) from {}; wrote {} ({:.2} MB, int8 detector {}, {} maps, {} labels)",
        calibration.images(),
        args.calibration.display(),
        args.output.display(),
        bytes.len() as f64 / 1e6,
        config.name,
        config.maps_count(),
        config.labels.len()
    );
    let float = Detector::new(&file)?;
    let (mut fs, mut qs) = (float.session(args.threads), q.session(args.threads));
    let mut agreement = Agreement::default();
    let checked = picks.len().min(COMPARED);
    for &i in picks.iter().take(checked) {
        let img = source.image(i)?;
        let (f, _) = fs.detect(&img, None);
        let (d, _) = qs.detect(&img, None);
        agreement.add(&f, &d, 0.5);
    }
    println!(
        "on {checked} calibration image(s), score ≥ {}: float {} detections, int8 {}; {} matched (same class, IoU ≥ 0.5), mean IoU {:.3} (min {:.3}), score difference mean {:.4} max {:.4}",
        config.nms.min_score,
        agreement.reference,
        agreement.other,
        agreement.matched,
        agreement.mean_iou(),
        agreement.iou_min,
        agreement.mean_score_diff(),
        agreement.score_diff_max
    );
    Ok(())
}
