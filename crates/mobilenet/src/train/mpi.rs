//! MPI as the [`Collective`] of data-parallel training (the `mpi` feature): `mpirun -np N
//! mobilenet train …` runs N ranks over Open MPI through the `mpi` crate (rsmpi).
//!
//! Each operation is a non-blocking MPI collective polled until it completes or until the
//! timeout passes without it completing: then a rank (or its link) is gone or stuck, and this
//! rank says so and aborts the job (`MPI_Abort`), rather than wait for ever.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::dist::Collective;
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
