//! Dynamic batching. Each model has a bounded queue and a worker thread that gathers what
//! waits in it — up to `max_batch` images, for at most `max_delay` after the first — into one
//! engine batch. One batch runs at a time over all models (the compute lock), on the engine's
//! threads, so compute never oversubscribes the cores; decoding happens before the queue, on
//! the server's own pool.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::RgbImage;
use mobilenet::detect::{AnyDetector, Detection, Frame, NmsConfig};
use mobilenet::{Classifier, Runner};
use tokio::sync::oneshot;

use super::metrics::Metrics;

/// Class probabilities of one image, or why there are none.
pub type Probabilities = Result<Vec<f32>, String>;
/// Detections of one image with its frame, or why there are none.
pub type Detections = Result<(Vec<Detection>, Frame), String>;

/// One request's share of work.
#[derive(Debug)]
pub enum Work {
    /// Classify one image given as the model's pixels.
    Classify {
        pixels: Vec<u8>,
        reply: oneshot::Sender<Probabilities>,
    },
    /// Detect objects in one image.
    Detect {
        image: RgbImage,
        nms: NmsConfig,
        reply: oneshot::Sender<Detections>,
    },
}

impl Work {
    /// Whether the request gave up waiting (timed out, or its client went away).
    fn abandoned(&self) -> bool {
        match self {
            Work::Classify { reply, .. } => reply.is_closed(),
            Work::Detect { reply, .. } => reply.is_closed(),
        }
    }
}

/// How the workers batch and compute.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Most images per engine batch.
    pub max_batch: usize,
    /// Longest wait for more images after the first of a batch.
    pub max_delay: Duration,
    /// Engine threads.
    pub threads: usize,
    /// Most requests waiting per model.
    pub queue: usize,
}

/// A model's queue: bounded, with its depth for `/metrics`.
#[derive(Debug)]
pub struct Queue {
    tx: Mutex<Option<SyncSender<Work>>>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
}

/// Why work was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: come back later.
    Full,
    /// The server is shutting down.
    Closed,
}

impl Queue {
    /// A queue of `capacity`, the worker's end of it, and its depth counter.
    fn new(capacity: usize) -> (Queue, Receiver<Work>, Arc<AtomicUsize>) {
        let (tx, rx) = sync_channel::<Work>(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let queue = Queue {
            tx: Mutex::new(Some(tx)),
            depth: Arc::clone(&depth),
            capacity,
        };
        (queue, rx, depth)
    }

    /// Queues `work` unless the queue is full or closed.
    pub fn submit(&self, work: Work) -> Result<(), Refused> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else {
            return Err(Refused::Closed);
        };
        self.depth.fetch_add(1, Ordering::Relaxed);
        tx.try_send(work).map_err(|e| {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => Refused::Full,
                TrySendError::Disconnected(_) => Refused::Closed,
            }
        })
    }

    /// Requests waiting.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Most requests waiting.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Stops taking work; the worker finishes what is queued and ends.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Starts the worker of a classifier; returns its queue and thread.
pub fn classifier(
    model: Arc<dyn Classifier>,
    settings: Settings,
    compute: Arc<Mutex<()>>,
    metrics: Arc<Metrics>,
) -> (Queue, JoinHandle<()>) {
    let (queue, rx, depth) = Queue::new(settings.queue);
    let handle = std::thread::spawn(move || {
        let classes = model.classes().unwrap_or(0);
        let per = model.pixels_len();
        // Runners by batch size (powers of two up to max_batch), made when first needed.
        let mut runners: Vec<(usize, Box<dyn Runner + '_>)> = Vec::new();
        loop {
            let Ok(first) = rx.recv() else { break };
            let mut jobs = vec![first];
            let deadline = Instant::now() + settings.max_delay;
            while jobs.len() < settings.max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(job) => jobs.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            depth.fetch_sub(jobs.len(), Ordering::Relaxed);
            jobs.retain(|j| !j.abandoned());
            let mut pixels = Vec::with_capacity(jobs.len() * per);
            let mut replies = Vec::with_capacity(jobs.len());
            for job in jobs {
                if let Work::Classify { pixels: p, reply } = job {
                    pixels.extend_from_slice(&p);
                    replies.push(reply);
                }
            }
            if replies.is_empty() {
                continue;
            }
            let n = replies.len();
            let size = n.next_power_of_two().min(settings.max_batch).max(n);
            if !runners.iter().any(|(s, _)| *s == size) {
                match model.try_runner(size, settings.threads) {
                    Ok(r) => runners.push((size, r)),
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.to_string()));
                        }
                        continue;
                    }
                }
            }
            let Some((_, runner)) = runners.iter_mut().find(|(s, _)| *s == size) else {
                continue;
            };
            let mut probs = vec![0.0; size * classes];
            let ran = {
                let _guard = compute.lock().unwrap_or_else(|e| e.into_inner());
                catch_unwind(AssertUnwindSafe(|| {
                    runner.load(&pixels);
                    runner.run();
                    runner.probabilities(&mut probs);
                }))
            };
            metrics.batch(n);
            for (i, reply) in replies.into_iter().enumerate() {
                let result = match &ran {
                    Ok(()) => Ok(probs[i * classes..][..classes].to_vec()),
                    Err(_) => {
                        Err("the engine failed on this batch (a bug: please report it)".into())
                    }
                };
                let _ = reply.send(result);
            }
        }
    });
    (queue, handle)
}

/// Starts the worker of a detector (one image at a time); returns its queue and thread.
pub fn detector(
    detector: Arc<AnyDetector>,
    settings: Settings,
    compute: Arc<Mutex<()>>,
    metrics: Arc<Metrics>,
) -> (Queue, JoinHandle<()>) {
    let (queue, rx, depth) = Queue::new(settings.queue);
    let handle = std::thread::spawn(move || {
        let mut session = detector.session(settings.threads);
        while let Ok(job) = rx.recv() {
            depth.fetch_sub(1, Ordering::Relaxed);
            if job.abandoned() {
                continue;
            }
            let Work::Detect { image, nms, reply } = job else {
                continue;
            };
            let found = {
                let _guard = compute.lock().unwrap_or_else(|e| e.into_inner());
                catch_unwind(AssertUnwindSafe(|| session.detect(&image, Some(&nms))))
            };
            metrics.batch(1);
            let _ = reply.send(found.map_err(|_| {
                "the engine failed on this image (a bug: please report it)".to_string()
            }));
        }
    });
    (queue, handle)
}
