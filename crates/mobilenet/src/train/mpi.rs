//! MPI as the [`Collective`] of data-parallel training (the `mpi` feature): `mpirun -np N
//! mobilenet train …` runs N ranks over Open MPI through the `mpi` crate (rsmpi).
//!
//! Each operation is a non-blocking MPI collective polled until it completes or until the
//! timeout passes without it completing: then a rank (or its link) is gone or stuck, and this
//! rank says so and aborts the job (`MPI_Abort`), rather than wait for ever.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::dist::{Collective, PendingSum};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Equivalence, Root};
use mpi::Threading;

/// The ranks of `MPI_COMM_WORLD`.
pub struct Mpi {
    /// Finalizes MPI when dropped; behind the lock every call takes, so calls never overlap
    /// (MPI is initialised for serialized use).
    universe: Mutex<Universe>,
    rank: usize,
    size: usize,
    timeout: Duration,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi {{ rank: {}, size: {} }}", self.rank, self.size)
    }
}

// SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED (checked in `Mpi::init`), and every
// MPI call of this type is made while holding `universe`'s lock, so no two threads ever call
// MPI at once — what that threading level allows from any thread.
unsafe impl Send for Mpi {}
// SAFETY: as for `Send`: shared access only reaches MPI through the lock.
unsafe impl Sync for Mpi {}

impl Mpi {
    /// Initialises MPI; `timeout` bounds every collective operation.
    ///
    /// # Errors
    ///
    /// MPI was initialised already, or cannot give serialized threading.
    pub fn init(timeout: Duration) -> Result<Mpi, String> {
        let (universe, level) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| "MPI is initialised already".to_string())?;
        if level < Threading::Serialized {
            return Err(format!(
                "this MPI library gives threading level {level:?}; training needs Serialized"
            ));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Mpi {
            universe: Mutex::new(universe),
            rank,
            size,
            timeout,
        })
    }

    /// Runs `op` on the world communicator, holding the lock that serializes MPI calls.
    fn with_world(&self, op: impl FnOnce(&SimpleCommunicator)) {
        let guard = self.universe.lock().unwrap_or_else(|e| e.into_inner());
        op(&guard.world());
    }

    /// Sums `values` across ranks in place: a non-blocking allreduce, waited for under the
    /// timeout.
    fn all_sum<T: Equivalence + Copy>(&self, values: &mut [T]) {
        let (send, bytes) = (values.to_vec(), std::mem::size_of_val(values));
        self.with_world(|world| {
            mpi::request::scope(|scope| {
                let r = world.immediate_all_reduce_into(
                    scope,
                    &send[..],
                    values,
                    SystemOperation::sum(),
                );
                self.wait(world, r, "an allreduce", bytes);
            });
        });
    }

    /// Polls `request` until it completes; past the timeout, says so and aborts the job.
    fn wait<'a, D: ?Sized, S: mpi::request::Scope<'a>>(
        &self,
        world: &SimpleCommunicator,
        mut request: mpi::request::Request<'a, D, S>,
        what: &str,
        bytes: usize,
    ) {
        let start = Instant::now();
        loop {
            match request.test() {
                Ok(_) => return,
                Err(r) => request = r,
            }
            self.pause(world, start, what, bytes);
        }
    }

    /// Between two polls of an operation started at `start`: past the timeout, says so and
    /// aborts the job.
    fn pause(&self, world: &SimpleCommunicator, start: Instant, what: &str, bytes: usize) {
        if start.elapsed() > self.timeout {
            eprintln!(
                "error: rank {} of {}: no answer from the other ranks for {:.0} s in {what} \
                 ({bytes} bytes): a rank died or is stuck; ending the job \
                 (--mpi-timeout sets the wait)",
                self.rank,
                self.size,
                self.timeout.as_secs_f64()
            );
            world.abort(3);
        }
        // Yield between polls for the first 50 ms (an allreduce on one machine takes
        // microseconds to milliseconds, and yielding lets a rank sharing this core compute),
        // then sleep so that a long wait does not take a core.
        if start.elapsed() < Duration::from_millis(50) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A non-blocking allreduce in flight. Its buffers are the request's for as long as it runs:
/// they are leaked into `'static` references when it starts and taken back once it completed.
struct MpiSum<'m> {
    mpi: &'m Mpi,
    request: Option<mpi::request::Request<'static, [f32]>>,
    /// The send and receive buffers (from `Box::into_raw`), until taken back.
    buffers: Option<(*mut [f32], *mut [f32])>,
    started: Instant,
}

impl MpiSum<'_> {
    /// Tests the request once (a step of MPI's progress); whether it has completed.
    fn test(&mut self) -> bool {
        let Some(request) = self.request.take() else {
            return true;
        };
        let _guard = self.mpi.universe.lock().unwrap_or_else(|e| e.into_inner());
        match request.test() {
            Ok(_) => true,
            Err(r) => {
                self.request = Some(r);
                false
            }
        }
    }

    /// Waits for completion under the timeout, then takes the buffers back: the sums.
    fn complete(&mut self) -> Option<Vec<f32>> {
        let (send, recv) = self.buffers.take()?;
        while !self.test() {
            let bytes = 4 * recv.len();
            self.mpi
                .with_world(|world| self.mpi.pause(world, self.started, "an allreduce", bytes));
        }
        // Safety: the request has completed, so MPI no longer reads `send` or writes `recv`;
        // both came from `Box::into_raw` in `start_sum_f32` and are taken back once (`buffers`
        // is emptied above).
        unsafe {
            drop(Box::from_raw(send));
            Some(Box::from_raw(recv).into_vec())
        }
    }
}

impl PendingSum for MpiSum<'_> {
    fn progress(&mut self) -> bool {
        self.test()
    }

    fn finish(mut self: Box<Self>) -> Vec<f32> {
        self.complete().unwrap_or_default()
    }
}

impl Drop for MpiSum<'_> {
    fn drop(&mut self) {
        // Dropped before `finish` (a panic on the way): the request completes before its
        // buffers are freed.
        self.complete();
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f64(&self, values: &mut [f64]) {
        self.all_sum(values);
    }

    fn sum_f32(&self, values: &mut [f32]) {
        self.all_sum(values);
    }

    fn start_sum_f32(&self, values: Vec<f32>) -> Box<dyn PendingSum + '_> {
        let send_ptr = Box::into_raw(values.into_boxed_slice());
        let recv_ptr = Box::into_raw(vec![0.0f32; send_ptr.len()].into_boxed_slice());
        // Safety: both buffers stay allocated, untouched by this rank, until the request has
        // completed (`MpiSum::complete` frees them only then).
        let (send, recv): (&'static [f32], &'static mut [f32]) =
            unsafe { (&*send_ptr, &mut *recv_ptr) };
        let guard = self.universe.lock().unwrap_or_else(|e| e.into_inner());
        let request = guard.world().immediate_all_reduce_into(
            mpi::request::StaticScope,
            send,
            recv,
            SystemOperation::sum(),
        );
        drop(guard);
        Box::new(MpiSum {
            mpi: self,
            request: Some(request),
            buffers: Some((send_ptr, recv_ptr)),
            started: Instant::now(),
        })
    }

    fn broadcast_f32(&self, values: &mut [f32]) {
        let bytes = 4 * values.len();
        self.with_world(|world| {
            mpi::request::scope(|scope| {
                let root = world.process_at_rank(0);
                let r = root.immediate_broadcast_into(scope, values);
                self.wait(world, r, "a broadcast", bytes);
            });
        });
    }
}
