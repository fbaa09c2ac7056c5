//! `mobilenet quantize`: post-training int8 quantization of a float model into a `.tflite`
//! file that `classify`, `eval` and `bench` (and TFLite) run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use mobilenet::data::Dataset;
use mobilenet::import::{import, read_labels, ImportOptions};
use mobilenet::int8::{quantize, Calibrator, QuantizedModel};
use mobilenet::preprocess::load_image;
use mobilenet::{Classifier, InferenceModel};
use rayon::prelude::*;

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Float model: a model file, TF-slim/Keras safetensors, a float .tflite, or a detector
    /// file (quantized with its predictors; run the result with `detect`)
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Calibration images: a folder of images, an image-folder data set (class sub-folders),
    /// CIFAR-10 .bin files or IDX files
    #[arg(long)]
    pub(crate) calibration: PathBuf,
    /// Calibration images used (spread evenly over the set)
    #[arg(long, default_value_t = 200)]
    pub(crate) images: usize,
    /// Where to write the int8 .tflite file
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// Class labels, one per line (when the model has none)
    #[arg(long)]
    pub(crate) labels: Option<PathBuf>,
    /// Use the observed min/max as activation ranges (TFLite's converter default) instead of
    /// clipping post-ReLU ranges where that lowers the expected quantization error
    #[arg(long)]
    pub(crate) min_max: bool,
    /// Compute threads (default: all cores)
    #[arg(long, default_value_t = 0, value_parser = crate::threads_arg)]
    pub(crate) threads: usize,
}

/// Image files directly inside `dir`, sorted.
fn flat_images(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "jpg" | "jpeg" | "png" | "bmp" | "webp"
                )
            })
        })
        .collect();
    v.sort();
    v
}

/// Where calibration images come from: a flat folder of images, or anything `train` reads.
pub(crate) enum Source {
    Files(Vec<PathBuf>),
    Data(Dataset),
}

impl Source {
    pub(crate) fn open(path: &Path) -> Result<Source> {
        let flat = if path.is_dir() {
            flat_images(path)
        } else {
            Vec::new()
        };
        if !flat.is_empty() {
            return Ok(Source::Files(flat));
        }
        Ok(Source::Data(Dataset::open(path).map_err(|e| {
            anyhow::anyhow!(
                "no images to calibrate with ({e}); --calibration takes a folder of images, class folders, CIFAR .bin or IDX files"
            )
        })?))
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Source::Files(f) => f.len(),
            Source::Data(d) => d.len(),
        }
    }

    pub(crate) fn image(&self, i: usize) -> Result<image::RgbImage> {
        Ok(match self {
            Source::Files(f) => load_image(&f[i])?,
            Source::Data(d) => d.image(i)?,
        })
    }

    /// `n` indices spread evenly over the source.
    pub(crate) fn picks(&self, n: usize) -> Vec<usize> {
        let total = self.len();
        let n = n.min(total);
        (0..n).map(|i| i * total / n).collect()
    }
}

/// Calibrates `cal` on the images at `picks`, each prepared into `len` values by `prepare`
/// (decoded, cropped or fitted, normalised) 16 at a time: ranges, then unless `--min-max` the
/// histograms, decoding again for the second pass rather than holding every prepared image
/// (200 of a 512² detector's inputs are 630 MB).
pub(crate) fn calibrate(
    source: &Source,
    picks: &[usize],
    len: usize,
    prepare: &(dyn Fn(&image::RgbImage, &mut [f32]) + Sync),
    cal: &mut Calibrator,
    args: &QuantizeArgs,
) -> Result<()> {
    let passes = if args.min_max { 1 } else { 2 };
    for pass in 0..passes {
        for chunk in picks.chunks(16) {
            let batch: Vec<Vec<f32>> = chunk
                .par_iter()
                .map(|&i| -> Result<Vec<f32>> {
                    let mut x = vec![0.0; len];
                    prepare(&source.image(i)?, &mut x);
                    Ok(x)
                })
                .collect::<Result<_>>()?;
            if pass == 0 {
                cal.observe(&batch.concat(), args.threads);
            } else {
                cal.observe_histogram(&batch.concat(), args.threads);
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file (no half-written model on a kill).
pub(crate) fn write_model(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tflite.partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: &QuantizeArgs) -> Result<()> {
    if args.images == 0 {
        bail!("--images 0: calibration needs at least one image");
    }
    if crate::same_file(&args.model, &args.output) {
        bail!(
            "{}: -o names the input model; write the quantized file to another path",
            args.output.display()
        );
    }
    if mobilenet::detect::is_detector_file(&args.model) {
        return super::quantize_detector::run(args);
    }
    let options = ImportOptions {
        resolution: None,
        labels: args.labels.as_deref().map(read_labels).transpose()?,
        ..Default::default()
    };
    let (file, _) = import(&args.model, &options)?;
    let res = file.config.resolution();
    let pre = file.preprocessing;
    let source = Source::open(&args.calibration)?;
    let picks = source.picks(args.images);
    let mut cal = Calibrator::new(&file)?;
    calibrate(
        &source,
        &picks,
        res * res * 3,
        &|img, x| pre.apply(img, res, x),
        &mut cal,
        args,
    )?;
    let calibration = cal.finish();
    let graph = quantize(&file, &calibration)?;
    let bytes = mobilenet::tflite::write(&graph);
    // Read what we wrote back through the same path `classify` uses, before writing it.
    let q = QuantizedModel::from_bytes(&bytes, &args.output)
        .context("the quantized graph does not read back (a bug: please report it)")?;
    write_model(&args.output, &bytes)?;
    println!(
        "calibrated on {} image(s) from {}; wrote {} ({:.2} MB, int8, {} classes)",
        calibration.images(),
        args.calibration.display(),
        args.output.display(),
        bytes.len() as f64 / 1e6,
        q.classes().map_or("no".to_string(), |c| c.to_string())
    );
    // How closely int8 follows float on the calibration images.
    if q.classes().is_some() {
        let float = InferenceModel::new(&file)?;
        let classifiers: [&dyn Classifier; 2] = [&float, &q];
        let mut runners = classifiers.map(|c| c.runner(1, args.threads));
        let classes = float.output_len();
        let mut probs = [vec![0.0; classes], vec![0.0; classes]];
        let mut agree = 0;
        let checked = picks.len().min(64);
        for &i in picks.iter().take(checked) {
            let img = source.image(i)?;
            // The quantized model's metadata carries the float model's crop.
            for ((c, r), p) in classifiers.iter().zip(&mut runners).zip(&mut probs) {
                r.load(&c.pixels(&img));
                r.run();
                r.probabilities(p);
            }
            let argmax = |v: &[f32]| {
                (0..v.len())
                    .max_by(|&a, &b| v[a].total_cmp(&v[b]))
                    .unwrap_or(0)
            };
            agree += usize::from(argmax(&probs[0]) == argmax(&probs[1]));
        }
        println!("int8 top-1 equals float top-1 on {agree} of {checked} calibration images");
    }
    Ok(())
}
