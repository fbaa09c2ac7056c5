//! The training loop in a group of ranks (see [`crate::train::dist`]): each rank's shard of
//! every global batch, rank 0's hold on the run directory, evaluation shared between ranks.

use std::path::Path;

use crate::data::Dataset;
use crate::eval::{evaluate, EvalReport};
use crate::infer::InferenceModel;
use crate::train::dist::Group;
use crate::train::failure::TrainFailure;
use crate::train::run::RunLock;

/// A global batch must give every rank the same number of images.
pub(super) fn check_batch(batch: usize, g: &Group) -> Result<(), TrainFailure> {
    let n = g.collective.size();
    if batch == 0 || !batch.is_multiple_of(n) {
        return Err(TrainFailure::Options(format!(
            "--batch-size {batch} is the global batch: it must split evenly among the {n} ranks \
             (a multiple of {n})"
        )));
    }
    Ok(())
}

/// The run directory's lock: this process's alone, or rank 0's in a group (the other ranks
/// write nothing there).
pub(super) fn lock(dir: &Path, g: Option<&Group>) -> Result<Option<RunLock>, TrainFailure> {
    match g {
        Some(g) if g.collective.rank() != 0 => Ok(None),
        _ => Ok(Some(RunLock::acquire(dir)?)),
    }
}

/// This rank's part of an epoch's `order` in global batches of `batch`: images
/// `r·L/n .. (r+1)·L/n` of each batch of `L` images, one after another, so that its batches of
/// `batch / n` are its shards of the global ones, with their indices. A last batch of fewer
/// images than ranks is left out (every rank must have an image in every step).
pub(super) fn shard(order: &[usize], batch: usize, g: &Group) -> Vec<usize> {
    let (r, n) = (g.collective.rank(), g.collective.size());
    order
        .chunks(batch)
        .filter(|b| b.len() >= n)
        .flat_map(|b| b[r * b.len() / n..(r + 1) * b.len() / n].iter().copied())
        .collect()
}

/// Global batches of an epoch of `len` images, as [`shard`] counts them.
pub(super) fn batches(len: usize, batch: usize, g: Option<&Group>) -> usize {
    let n = g.map_or(1, |g| g.collective.size());
    len / batch + usize::from(len % batch >= n)
}

/// `val` evaluated with each rank taking every n-th image, the results added up on every rank:
/// the same numbers as one process on the whole set (the per-class and confusion tables, and
/// the skipped images' messages, stay this rank's), and how many images every rank skipped.
pub(super) fn evaluate_shared(
    plan: &InferenceModel,
    val: &Dataset,
    (batch, threads, workers): (usize, usize, usize),
    g: &Group,
) -> Result<(EvalReport, usize), TrainFailure> {
    let (r, n) = (g.collective.rank(), g.collective.size());
    if val.len() < n {
        // Too few images to give every rank one: each evaluates them all.
        let report = evaluate(plan, val, batch, threads, workers)?;
        let skipped = report.skipped.len();
        return Ok((report, skipped));
    }
    let mine: Vec<usize> = (r..val.len()).step_by(n).collect();
    let mut report = evaluate(plan, &val.subset(&mine), batch, threads, workers)?;
    let k = report.images as f64;
    let mut sums = [
        k,
        report.top1 as f64 * k,
        report.top5 as f64 * k,
        report.loss as f64 * k,
        report.skipped.len() as f64,
    ];
    g.collective.sum_f64(&mut sums);
    let total = sums[0].max(1.0);
    report.images = sums[0].round() as usize;
    report.top1 = (sums[1] / total) as f32;
    report.top5 = (sums[2] / total) as f32;
    report.loss = (sums[3] / total) as f32;
    Ok((report, sums[4].round() as usize))
}

/// Before a step: whether any rank's shard came out empty (every image skipped: then every
/// rank skips the batch, so that they step together), and the images every rank skipped, in
/// one allreduce.
pub(super) fn shards_loaded(g: Option<&Group>, empty: bool, skipped: usize) -> (bool, usize) {
    match g {
        Some(g) => {
            let mut v = [f64::from(u8::from(empty)), skipped as f64];
            g.collective.sum_f64(&mut v);
            (v[0] > 0.0, v[1].round() as usize)
        }
        None => (empty, skipped),
    }
}

/// Whether any rank asks to stop (every rank must stop at the same step).
pub(super) fn any(g: Option<&Group>, mine: bool) -> bool {
    match g {
        Some(g) => {
            let mut v = [f64::from(u8::from(mine))];
            g.collective.sum_f64(&mut v);
            v[0] > 0.0
        }
        None => mine,
    }
}
