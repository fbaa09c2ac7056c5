//! Batches decoded and augmented on worker threads, ahead of the training step, in order.
//!
//! Batch `b` of epoch `e` is a function of the data set, the image order and the seed only
//! (its augmentation draws from `Rng::new(seed ⊕ e ⊕ b)`), not of which thread made it or when,
//! so a run — or a resumed run — is reproducible.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::{prepare, Augment, DataError, Dataset};
use crate::preprocess::Preprocessing;
use crate::Rng;

/// One batch of network inputs.
#[derive(Debug)]
pub struct Batch {
    /// Position of the batch in the epoch.
    pub index: usize,
    /// `len × res² × 3` inputs, NHWC.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<usize>,
    /// Images of the batch left out because they do not decode (only for a data set that
    /// [skips bad images](Dataset::skipping_bad_images)): the error of each.
    pub skipped: Vec<DataError>,
}

/// How far ahead of the consumer the workers may run, in batches per worker.
const AHEAD_PER_WORKER: usize = 2;

/// An iterator over the batches of one pass over `order`, produced by worker threads.
pub struct Loader {
    rx: Receiver<(usize, Result<Batch, DataError>)>,
    pending: BTreeMap<usize, Result<Batch, DataError>>,
    next: usize,
    batches: usize,
    consumed: Arc<(Mutex<usize>, Condvar)>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("next", &self.next)
            .field("batches", &self.batches)
            .finish()
    }
}

/// What every worker needs.
struct Job {
    data: Dataset,
    order: Vec<usize>,
    batch_size: usize,
    res: usize,
    augment: Augment,
    pre: Preprocessing,
    seed: u64,
}

impl Loader {
    /// Batches of `batch_size` images of `data`, taken in `order` (positions in `data`),
    /// starting at batch `first` (to resume mid-epoch); a last short batch is kept.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        data: &Dataset,
        order: Vec<usize>,
        batch_size: usize,
        first: usize,
        res: usize,
        augment: Augment,
        pre: Preprocessing,
        seed: u64,
        workers: usize,
    ) -> Loader {
        let batch_size = batch_size.max(1);
        let batches = order.len().div_ceil(batch_size);
        let workers = workers.max(1);
        let ahead = workers * AHEAD_PER_WORKER;
        let (tx, rx) = sync_channel(ahead + workers);
        let job = Arc::new(Job {
            data: data.clone(),
            order,
            batch_size,
            res,
            augment,
            pre,
            seed,
        });
        let next_task = Arc::new(AtomicUsize::new(first));
        let consumed = Arc::new((Mutex::new(first), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..workers)
            .map(|_| {
                let (job, next_task, consumed, stop, tx) = (
                    Arc::clone(&job),
                    Arc::clone(&next_task),
                    Arc::clone(&consumed),
                    Arc::clone(&stop),
                    tx.clone(),
                );
                std::thread::spawn(move || loop {
                    let b = next_task.fetch_add(1, Ordering::Relaxed);
                    if b >= batches || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Do not run more than `ahead` batches past the consumer.
                    {
                        let (lock, cv) = &*consumed;
                        let mut done = lock.lock().unwrap_or_else(|e| e.into_inner());
                        while b >= *done + ahead && !stop.load(Ordering::Relaxed) {
                            done = cv.wait(done).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let result = make_batch(&job, b);
                    if tx.send((b, result)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Loader {
            rx,
            pending: BTreeMap::new(),
            next: first,
            batches,
            consumed,
            stop,
            workers: handles,
        }
    }

    /// Number of batches in the whole pass (including those skipped by `first`).
    pub fn batches(&self) -> usize {
        self.batches
    }
}

fn make_batch(job: &Job, b: usize) -> Result<Batch, DataError> {
    let start = b * job.batch_size;
    let positions = &job.order[start..(start + job.batch_size).min(job.order.len())];
    let per = job.res * job.res * 3;
    let mut images = vec![0.0; positions.len() * per];
    let mut labels = Vec::with_capacity(positions.len());
    let mut skipped = Vec::new();
    let mut rng = Rng::new(job.seed ^ (b as u64).wrapping_mul(0x5851_F42D_4C95_7F2D));
    for &p in positions {
        let out = &mut images[labels.len() * per..][..per];
        let prepared = job.data.with_image(p, |img| {
            prepare(img, job.res, job.augment, &mut rng, &job.pre, out)
        });
        match prepared {
            Ok(()) => labels.push(job.data.label(p)),
            Err(e @ DataError::Image(_)) if job.data.skips_bad_images() => skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    images.truncate(labels.len() * per);
    Ok(Batch {
        index: b,
        images,
        labels,
        skipped,
    })
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.batches {
            return None;
        }
        let result = loop {
            if let Some(r) = self.pending.remove(&self.next) {
                break r;
            }
            match self.rx.recv() {
                Ok((b, r)) => {
                    self.pending.insert(b, r);
                }
                Err(_) => return None,
            }
        };
        self.next += 1;
        let (lock, cv) = &*self.consumed;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = self.next;
        cv.notify_all();
        Some(result)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.consumed.1.notify_all();
        // Unblock workers waiting to send.
        while self.rx.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_in_order_and_do_not_depend_on_worker_count() {
        let data = Dataset::builtin_fashion_mnist().subset(&(0..100).collect::<Vec<_>>());
        let pre = Preprocessing::default();
        let run = |workers| {
            let order: Vec<usize> = (0..100).rev().collect();
            Loader::new(
                &data,
                order,
                16,
                0,
                32,
                Augment::PadCropFlip { pad: 4 },
                pre,
                5,
                workers,
            )
            .map(|b| b.expect("batch"))
            .collect::<Vec<_>>()
        };
        let one = run(1);
        let four = run(4);
        assert_eq!(one.len(), 7);
        assert_eq!(one.last().map(|b| b.labels.len()), Some(4));
        for (a, b) in one.iter().zip(&four) {
            assert_eq!(
                (a.index, &a.labels, &a.images),
                (b.index, &b.labels, &b.images)
            );
        }
        assert_eq!(one[0].labels[0], data.label(99));
    }

    #[test]
    fn resuming_at_a_batch_gives_the_same_batches() {
        let data = Dataset::builtin_fashion_mnist().subset(&(0..64).collect::<Vec<_>>());
        let pre = Preprocessing::default();
        let order: Vec<usize> = (0..64).collect();
        let all: Vec<_> = Loader::new(
            &data,
            order.clone(),
            8,
            0,
            32,
            Augment::PadCropFlip { pad: 2 },
            pre,
            1,
            2,
        )
        .map(|b| b.expect("batch"))
        .collect();
        let tail: Vec<_> = Loader::new(
            &data,
            order,
            8,
            5,
            32,
            Augment::PadCropFlip { pad: 2 },
            pre,
            1,
            2,
        )
        .map(|b| b.expect("batch"))
        .collect();
        assert_eq!(tail.len(), 3);
        assert_eq!(tail[0].images, all[5].images);
    }

    #[test]
    fn dropping_early_stops_the_workers() {
        let data = Dataset::builtin_fashion_mnist();
        let order: Vec<usize> = (0..10_000).collect();
        let mut loader = Loader::new(
            &data,
            order,
            32,
            0,
            32,
            Augment::None,
            Preprocessing::default(),
            0,
            2,
        );
        assert!(loader.next().is_some());
        drop(loader);
    }
}
