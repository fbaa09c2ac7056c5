//! `mobilenet train` under `mpirun`: joining the group of ranks (the `mpi` feature), and
//! keeping the other ranks quiet while rank 0 reports.

use anyhow::Result;
use mobilenet::train::dist::Group;
use mobilenet::train::trainer::{EpochMetrics, Progress};

use super::TrainArgs;

/// The group this process trains in: the MPI world when started by an MPI launcher (Open
/// MPI's `mpirun`, or a PMI one such as Slurm's `srun`), `None` otherwise.
///
/// # Errors
///
/// Started by a launcher in a build without the `mpi` feature (each process would train alone
/// and fight over the run directory), or MPI fails to start.
pub(super) fn join(args: &TrainArgs) -> Result<Option<Group>> {
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !launched {
        return Ok(None);
    }
    join_mpi(args)
}

#[cfg(feature = "mpi")]
fn join_mpi(args: &TrainArgs) -> Result<Option<Group>> {
    let timeout = std::time::Duration::from_secs_f64(args.mpi_timeout);
    let mpi = mobilenet::train::mpi::Mpi::init(timeout).map_err(anyhow::Error::msg)?;
    use mobilenet::train::dist::Collective;
    if mpi.size() == 1 {
        return Ok(None);
    }
    Ok(Some(Group {
        collective: std::sync::Arc::new(mpi),
        sync_bn: !args.per_rank_bn,
        bucket_bytes: (args.allreduce_bucket_mb * 1e6).round() as usize,
    }))
}

#[cfg(not(feature = "mpi"))]
fn join_mpi(_: &TrainArgs) -> Result<Option<Group>> {
    anyhow::bail!(
        "started by mpirun, but this mobilenet was built without MPI: build it with \
         `cargo build --release -p mobilenet-cli --features mpi` (Open MPI: libopenmpi-dev, \
         openmpi-bin, libclang-dev)"
    )
}

/// Ranks other than 0 print nothing on standard output (rank 0 speaks for the run; errors
/// still reach standard error from any rank).
pub(super) fn quiet_stdout() {
    #[cfg(unix)]
    // SAFETY: plain libc calls on file descriptors this process owns; /dev/null is opened
    // read-write and duplicated over standard output, then its own descriptor closed.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
}

/// The progress of a rank other than 0: no bars, no plots; stops when asked (the trainer
/// stops every rank when any is asked).
pub(super) struct Silent(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Progress for Silent {
    fn step(&mut self, _: usize, _: usize, _: usize, _: f32, _: f32, _: f32) {}
    fn epoch(&mut self, _: &EpochMetrics, _: &[EpochMetrics]) {}
    fn stop_requested(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
