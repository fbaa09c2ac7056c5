//! Evaluation of a model on a labelled data set: top-1, top-5, loss, per-class accuracy and the
//! confusion matrix.

use serde::Serialize;

use crate::classifier::Classifier;
use crate::data::{Augment, DataError, Dataset, Loader};
use crate::preprocess::{PixelNorm, Preprocessing};

/// The result of evaluating a model on a data set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// Images evaluated.
    pub images: usize,
    /// Images left out because they do not decode (a data set that skips bad images): the
    /// error of each.
    pub skipped: Vec<String>,
    /// Fraction whose most probable class is the label.
    pub top1: f32,
    /// Fraction whose label is among the five most probable classes.
    pub top5: f32,
    /// Mean cross-entropy.
    pub loss: f32,
    /// Class names (from the data set).
    pub classes: Vec<String>,
    /// Accuracy per true class (NaN where the class has no images).
    pub per_class: Vec<f32>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Evaluates `model` (any runtime) on `data` with the model's crop and resize, `batch` images
/// at a time on `threads` threads, decoding on `workers` loader threads.
///
/// # Errors
///
/// An image that does not decode (unless `data` skips bad images); a model without a classifier; a data set with more classes
/// than the model.
pub fn evaluate(
    model: &dyn Classifier,
    data: &Dataset,
    batch: usize,
    threads: usize,
    workers: usize,
) -> Result<EvalReport, DataError> {
    let classes = model.classes().ok_or_else(|| DataError::Format {
        path: "<model>".into(),
        reason: "the model has no classifier head".into(),
    })?;
    if data.is_empty() {
        return Err(DataError::Format {
            path: "<data set>".into(),
            reason: "no images to evaluate".into(),
        });
    }
    let res = model.resolution();
    let batch = batch.clamp(1, data.len().max(1));
    // The loader's images as pixel values (x·1 + 0), turned back into the bytes every runtime
    // takes.
    let pre = Preprocessing {
        crop: model.preprocessing().crop,
        norm: PixelNorm::MeanStd {
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
        },
    };
    let mut runner = model
        .try_runner(batch, threads)
        .map_err(|e| DataError::Format {
            path: "<model>".into(),
            reason: e.to_string(),
        })?;
    let mut bytes = vec![0u8; batch * model.pixels_len()];
    let mut non_finite = false;
    let report = tally(
        data,
        classes,
        res,
        pre,
        batch,
        workers,
        &mut |input, out| {
            for (b, &x) in bytes.iter_mut().zip(input) {
                *b = x.round().clamp(0.0, 255.0) as u8;
            }
            runner.load(&bytes);
            runner.run();
            runner.probabilities(out);
            non_finite |= out.iter().any(|p| !p.is_finite());
        },
    )?;
    if non_finite {
        // NaN ranks first in no comparison: it would count as correct and look like accuracy.
        return Err(DataError::Format {
            path: "<model>".into(),
            reason: "the model gives non-finite probabilities (its weights overflow f32)".into(),
        });
    }
    Ok(report)
}

/// Runs `probabilities(batch input, batch × classes out)` over `data` in batches of `batch`
/// (the last one padded with zeros) and tallies the report.
#[allow(clippy::too_many_arguments)]
fn tally(
    data: &Dataset,
    classes: usize,
    res: usize,
    pre: Preprocessing,
    batch: usize,
    workers: usize,
    probabilities: &mut dyn FnMut(&[f32], &mut [f32]),
) -> Result<EvalReport, DataError> {
    let k = data.classes().len();
    if k > classes {
        return Err(DataError::Format {
            path: "<data set>".into(),
            reason: format!("the data set has {k} classes, the model only {classes}"),
        });
    }
    let mut confusion = vec![vec![0usize; classes]; k];
    let (mut top1, mut top5, mut loss) = (0usize, 0usize, 0.0f64);
    let order: Vec<usize> = (0..data.len()).collect();
    let loader = Loader::new(data, order, batch, 0, res, Augment::None, pre, 0, workers);
    let mut probs = vec![0.0f32; batch * classes];
    let (mut images, mut skipped) = (0, Vec::new());
    for b in loader {
        let b = b?;
        skipped.extend(b.skipped.iter().map(|e| e.to_string()));
        let n = b.labels.len();
        images += n;
        if n == 0 {
            continue;
        }
        let mut input = b.images;
        input.resize(batch * res * res * 3, 0.0);
        probabilities(&input, &mut probs);
        for (p, &label) in probs.chunks(classes).zip(&b.labels).take(n) {
            loss -= (p[label].max(1e-30) as f64).ln();
            let rank = p.iter().filter(|&&v| v > p[label]).count();
            top1 += usize::from(rank == 0);
            top5 += usize::from(rank < 5);
            let predicted = crate::classify::top_k(p, 1, None)[0].class;
            confusion[label][predicted] += 1;
        }
    }
    if images == 0 {
        return Err(DataError::Format {
            path: "<data set>".into(),
            reason: format!("none of its {} images decodes", skipped.len()),
        });
    }
    let per_class = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| row[c] as f32 / row.iter().sum::<usize>() as f32)
        .collect();
    Ok(EvalReport {
        images,
        skipped,
        top1: top1 as f32 / images.max(1) as f32,
        top5: top5 as f32 / images.max(1) as f32,
        loss: (loss / images.max(1) as f64) as f32,
        classes: data.classes().to_vec(),
        per_class,
        confusion,
    })
}
