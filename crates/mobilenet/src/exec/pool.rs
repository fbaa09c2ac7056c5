//! A small spinning thread pool for the forward pass.
//!
//! A forward pass is ~30 short parallel steps (tens to hundreds of microseconds each). Waking a
//! sleeping thread costs microseconds, which is why a general work-stealing pool (rayon) lost
//! most of the second core on small models (0.25-128 ran slower on 2 threads than on 1). Here
//! each step is split into exactly one part per thread, part 0 runs on the calling thread,
//! and the workers spin between steps, parking only after a pause of [`SPIN`] without work.
//!
//! Protocol: the caller writes the job, then bumps `epoch` (release); a worker that sees the
//! new epoch (acquire) runs its part and decrements `pending` (release); the caller returns when
//! `pending` is zero (acquire). The caller never writes a new job before every worker finished
//! the previous one, so a worker sees every epoch and the job it reads is still alive.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    epoch: AtomicUsize,
    pending: AtomicUsize,
    parked: AtomicUsize,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    /// The current job; written by the caller only while every worker is idle.
    job: UnsafeCell<Option<Job>>,
    lock: Mutex<()>,
    wake: Condvar,
}

// Safety: `job` is written only by the thread that owns the pool, while all workers wait for the
// next epoch, and read by workers only after they observe that epoch (see the module docs).
unsafe impl Sync for Shared {}
// Safety: the raw job pointer is only dereferenced under the protocol above.
unsafe impl Send for Shared {}

/// A pool of `threads − 1` spinning workers plus the calling thread.
pub struct SpinPool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SpinPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpinPool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl SpinPool {
    /// A pool running parts on `threads` threads (the caller's included).
    pub fn new(threads: usize) -> SpinPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|part| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("mobilenet-{part}"))
                    .spawn(move || worker(&shared, part))
                    .expect("spawn a worker thread")
            })
            .collect();
        SpinPool {
            threads,
            shared,
            workers,
        }
    }

    /// Number of parts every [`SpinPool::run`] is split into.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(part)` once for every `part` in `0..threads()`, each on a different thread, and
    /// returns when all have finished.
    ///
    /// # Panics
    ///
    /// If `f` panicked on any thread.
    pub fn run(&mut self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        let shared = &*self.shared;
        // Safety: every worker finished the previous job (pending reached 0 before the last
        // run returned) and waits for a new epoch, so nobody reads `job` now. The pointer's
        // lifetime is erased; it is only used until this function returns, below.
        unsafe {
            let job: Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f);
            *shared.job.get() = Some(job);
        }
        shared.pending.store(self.threads - 1, Ordering::Relaxed);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.parked.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        while shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if shared.panicked.swap(false, Ordering::AcqRel) {
            panic!("a worker thread panicked");
        }
    }
}

fn worker(shared: &Shared, part: usize) {
    // The epoch the pool was created with: not a fresh load, which could already see the
    // first job's epoch if that job was posted before this thread started, and miss it.
    let mut seen = 0;
    loop {
        let mut idle_since = None;
        let mut spins = 0u32;
        loop {
            let now = shared.epoch.load(Ordering::Acquire);
            if now != seen {
                seen = now;
                break;
            }
            // Reading the clock on every spin showed up in profiles: check it every 1024.
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SPIN {
                continue;
            }
            let guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.parked.fetch_add(1, Ordering::SeqCst);
            if shared.epoch.load(Ordering::SeqCst) == seen {
                let _guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            shared.parked.fetch_sub(1, Ordering::SeqCst);
            idle_since = None;
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        // Safety: the epoch we just observed was published after `job` was written, and the
        // caller keeps the job alive until `pending` reaches 0.
        let job = unsafe { *shared.job.get() };
        if let Some(job) = job {
            // Safety: see above.
            let f = unsafe { &*job };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(part))).is_err() {
                shared.panicked.store(true, Ordering::Release);
            }
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        let shared = &*self.shared;
        shared.shutdown.store(true, Ordering::Release);
        // Safety: all workers are idle (no run is in progress while we hold &mut self).
        unsafe { *shared.job.get() = None };
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_per_call() {
        let mut pool = SpinPool::new(3);
        let counts: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            pool.run(&|part| {
                counts[part].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1000));
    }

    /// Catches a lost first job: a worker that read the epoch only after the first job had been
    /// posted waited for the next one forever, and so did the caller.
    #[test]
    fn a_job_posted_before_the_workers_start_is_run() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..200 {
                let mut pool = SpinPool::new(2);
                let hits = AtomicUsize::new(0);
                pool.run(&|_| {
                    hits.fetch_add(1, Ordering::Relaxed);
                });
                assert_eq!(hits.load(Ordering::Relaxed), 2);
            }
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("200 fresh pools each ran a job within 60 s");
    }

    #[test]
    fn workers_wake_after_parking() {
        let mut pool = SpinPool::new(2);
        let hits = AtomicUsize::new(0);
        std::thread::sleep(SPIN * 5);
        pool.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_panicking_part_is_reported() {
        let mut pool = SpinPool::new(2);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|part| assert!(part != 1, "part 1 fails"));
        }));
        assert!(result.is_err());
        // The pool still works afterwards.
        let hits = AtomicUsize::new(0);
        pool.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }
}
