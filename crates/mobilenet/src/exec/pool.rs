//! A small spinning thread pool for the forward pass.
//!
//! A forward pass is ~30 short parallel steps (tens to hundreds of microseconds each). Waking a
//! sleeping thread costs microseconds, which is why a general work-stealing pool (rayon) lost
//! most of the second core on small models (0.25-128 ran slower on 2 threads than on 1). Here
//! each step is split into exactly one part per thread, part 0 runs on the calling thread,
//! and the workers spin between steps, parking only after a pause of [`SPIN`] without work.
//!
//! Parts are *claimed*, not assigned: whichever thread is running takes the next unclaimed
//! part, the caller included once its own part is done. On a machine whose cores are busy with
//! other processes a worker may not get a core for milliseconds; the caller then runs that
//! worker's part itself instead of spinning while it waits (a 1.0-224 forward pass went from
//! 16 ms on one thread to 22–34 ms on two, beside two busy loops on 2 cores, before this).
//! Which thread runs a part never changes what it computes: a part's index, not its thread,
//! picks its chunk and its slot of any partial sum, so results stay bit-identical.
//!
//! A part a descheduled worker has already claimed still has to be waited for, and on a
//! loaded machine that wait can exceed the time one thread would have taken for the whole
//! job. So the caller times each job: its own parts (which give the cost of doing all of them
//! itself) against the job's wall time. When a running average says the workers cost more
//! than they give, the next [`SERIAL_JOBS`] jobs run every part on the calling thread, the
//! workers park (and stop taking cores from whoever else is running), and then a few jobs
//! probe whether they help again.
//!
//! Protocol: `state` packs the job's epoch (high bits) and the next unclaimed part (low
//! [`PART_BITS`] bits). The caller writes the job, sets `pending` to the number of parts past
//! 0, then stores `(epoch + 1, 1)` (release). A thread claims part `p` by a compare-exchange of
//! `(epoch, p)` to `(epoch, p + 1)` (acquire, so it sees the job), runs it, and decrements
//! `pending` (release); the caller returns when `pending` is zero (acquire). A claim names the
//! epoch, so a thread that slept through a whole job cannot claim a part of the next one with
//! the old job in hand; and the caller writes a new job only after every claimed part of the
//! previous one finished, so a job a thread reads is still alive.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// Jobs run on the calling thread alone once the workers were found to slow jobs down
/// (a 1.0-224 forward pass is ~30 jobs).
const SERIAL_JOBS: u32 = 256;

/// Weight of the newest job in the running average of `wall time / one-thread estimate`.
const RATIO_WEIGHT: f64 = 1.0 / 8.0;

/// The average a probe starts from: between a healthy pool (about `1 / threads`) and the
/// point where one thread is as fast (1).
const RATIO_PRIOR: f64 = 0.75;

/// Bits of [`Shared::state`] that hold the next unclaimed part.
const PART_BITS: u32 = 16;
const PART_MASK: u64 = (1 << PART_BITS) - 1;

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// `epoch << PART_BITS | next unclaimed part`.
    state: AtomicU64,
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
    epoch: u64,
    /// Running average of a job's wall time over the time the caller alone would have taken.
    ratio: f64,
    /// Jobs left to run on the calling thread alone.
    serial_left: u32,
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
        let threads = threads.clamp(1, PART_MASK as usize);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(threads as u64),
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
                    .spawn(move || worker(&shared, threads))
                    .expect("spawn a worker thread")
            })
            .collect();
        SpinPool {
            threads,
            epoch: 0,
            ratio: RATIO_PRIOR,
            serial_left: 0,
            shared,
            workers,
        }
    }

    /// Number of parts every [`SpinPool::run`] is split into.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(part)` once for every `part` in `0..threads()`, on up to `threads()` threads
    /// (part 0 on the calling thread), and returns when all have finished.
    ///
    /// # Panics
    ///
    /// If `f` panicked on any thread.
    pub fn run(&mut self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        if self.serial_left > 0 {
            self.serial_left -= 1;
            if self.serial_left == 0 {
                self.ratio = RATIO_PRIOR;
            }
            (0..self.threads).for_each(f);
            return;
        }
        let start = Instant::now();
        let shared = &*self.shared;
        // Safety: every worker finished the previous job (pending reached 0 before the last
        // run returned) and waits for a new epoch, so nobody reads `job` now. The pointer's
        // lifetime is erased; it is only used until this function returns, below.
        unsafe {
            let job: Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f);
            *shared.job.get() = Some(job);
        }
        shared.pending.store(self.threads - 1, Ordering::Relaxed);
        self.epoch += 1;
        shared
            .state
            .store(self.epoch << PART_BITS | 1, Ordering::SeqCst);
        if shared.parked.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        // Parts no worker has started yet are ours too.
        let mut ours = 1;
        while let Some(part) = claim(shared, self.epoch, self.threads) {
            run_part(shared, f, part);
            ours += 1;
        }
        let own = start.elapsed();
        while shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        let wall = start.elapsed();
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if shared.panicked.swap(false, Ordering::AcqRel) {
            panic!("a worker thread panicked");
        }
        self.judge(own, wall, ours);
    }
}

/// Claims the next unclaimed part of job `epoch`, if that job is still current and has one.
fn claim(shared: &Shared, epoch: u64, threads: usize) -> Option<usize> {
    let mut state = shared.state.load(Ordering::Acquire);
    loop {
        let part = (state & PART_MASK) as usize;
        if state >> PART_BITS != epoch || part >= threads {
            return None;
        }
        match shared.state.compare_exchange_weak(
            state,
            state + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(part),
            Err(now) => state = now,
        }
    }
}

/// Runs a claimed part and counts it done; a panic is recorded for the caller to raise.
fn run_part(shared: &Shared, f: &(dyn Fn(usize) + Sync), part: usize) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(part))).is_err() {
        shared.panicked.store(true, Ordering::Release);
    }
    shared.pending.fetch_sub(1, Ordering::Release);
}

impl SpinPool {
    /// Updates the running average with a job whose `ours` parts took the caller `own`, and
    /// the whole job `wall`; turns to one thread when the workers cost more than they give.
    fn judge(&mut self, own: Duration, wall: Duration, ours: usize) {
        let alone = own.as_secs_f64() / ours as f64 * self.threads as f64;
        if alone <= 0.0 {
            return;
        }
        let ratio = (wall.as_secs_f64() / alone).min(4.0);
        self.ratio += (ratio - self.ratio) * RATIO_WEIGHT;
        if self.ratio > 1.0 {
            self.serial_left = SERIAL_JOBS;
        }
    }
}

fn worker(shared: &Shared, threads: usize) {
    // The epoch the pool was created with: not a fresh load, which could already see the
    // first job's epoch if that job was posted before this thread started, and miss it.
    let mut seen = 0;
    loop {
        let mut idle_since = None;
        let mut spins = 0u32;
        loop {
            let now = shared.state.load(Ordering::Acquire) >> PART_BITS;
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
            if shared.state.load(Ordering::SeqCst) >> PART_BITS == seen {
                let _guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            shared.parked.fetch_sub(1, Ordering::SeqCst);
            idle_since = None;
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        while let Some(part) = claim(shared, seen, threads) {
            // Safety: the claim succeeded on this epoch's state, which was stored after `job`
            // was written (the acquire of the claim sees it), and the caller keeps the job
            // alive until `pending` — which counts this part — reaches 0.
            let job = unsafe { *shared.job.get() };
            if let Some(job) = job {
                // Safety: see above.
                run_part(shared, unsafe { &*job }, part);
            }
        }
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        let shared = &*self.shared;
        shared.shutdown.store(true, Ordering::Release);
        // Safety: all workers are idle (no run is in progress while we hold &mut self).
        unsafe { *shared.job.get() = None };
        // A new epoch with no part to claim: workers wake, see `shutdown` and return.
        shared
            .state
            .store((self.epoch + 1) << PART_BITS | PART_MASK, Ordering::SeqCst);
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
    use std::sync::Mutex;

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

    /// The thread part 1 of a job runs on, when part 0 takes `part_0` (time for a worker to
    /// wake and claim part 1).
    fn part_1_thread(pool: &mut SpinPool, part_0: Duration) -> std::thread::ThreadId {
        let at = Mutex::new(None);
        pool.run(&|part| {
            if part == 0 {
                std::thread::sleep(part_0);
            } else {
                *at.lock().expect("lock") = Some(std::thread::current().id());
            }
        });
        let id = at.lock().expect("lock").take();
        id.expect("part 1 ran")
    }

    /// Jobs whose wall time exceeds what the caller alone would take (a loaded machine)
    /// turn the pool to the calling thread for a while; then it tries its workers again.
    #[test]
    fn slow_workers_turn_the_pool_to_one_thread_for_a_while() {
        let me = std::thread::current().id();
        let mut pool = SpinPool::new(2);
        let ms = Duration::from_millis;
        // Healthy jobs (wall ≈ half of what one thread would take) keep the workers.
        for _ in 0..20 {
            pool.judge(ms(10), ms(11), 1);
        }
        assert_eq!(pool.serial_left, 0);
        // Jobs twice as slow as one thread: a few of them are enough.
        for _ in 0..4 {
            pool.judge(ms(10), ms(40), 1);
        }
        assert_eq!(pool.serial_left, SERIAL_JOBS);
        for _ in 0..SERIAL_JOBS {
            let at = part_1_thread(&mut pool, Duration::ZERO);
            assert_eq!(at, me, "every part on the caller");
        }
        // The probe: part 1 back on a worker, which has parked meanwhile and must be woken.
        assert_ne!(part_1_thread(&mut pool, ms(20)), me);
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
