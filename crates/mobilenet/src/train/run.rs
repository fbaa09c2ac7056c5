//! What a run directory holds beyond the weights: where the data came from (so that a resumed
//! run opens the same data, and refuses data that changed), and a lock so that two runs never
//! write into one directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::Fingerprint;
use crate::error::ModelError;

/// The data a run was started on, as a front end chose it: the data path (`None`: its default
/// data), a separate held-out path, and otherwise how many images were held out of the data with
/// which seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    /// The training data (absolute), or `None` for the front end's default.
    pub data: Option<PathBuf>,
    /// Separate held-out data (absolute).
    pub val: Option<PathBuf>,
    /// Images held out of `data` when there is no separate held-out set (a count in
    /// checkpoints written before percentages).
    pub holdout: crate::data::Holdout,
    /// Seed of that held-out split.
    pub split_seed: u64,
    /// Whether images that do not decode are left out instead of stopping the run.
    #[serde(default)]
    pub skip_bad_images: bool,
}

/// The data of a run: where it came from and what it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    /// Where the data came from.
    pub source: DataSource,
    /// The training set when the run started.
    pub train: Fingerprint,
    /// The held-out set when the run started.
    pub held_out: Fingerprint,
}

impl DataRecord {
    /// Checks that `train` and `held_out`, opened again from [`DataRecord::source`], are the
    /// data the run started on.
    ///
    /// # Errors
    ///
    /// A message naming the set that changed, with its size then and now.
    pub fn check(&self, train: &Fingerprint, held_out: &Fingerprint) -> Result<(), String> {
        for (what, then, now) in [
            ("training", &self.train, train),
            ("held-out", &self.held_out, held_out),
        ] {
            if then != now {
                let classes = if then.classes != now.classes {
                    format!("; classes then {:?}, now {:?}", then.classes, now.classes)
                } else {
                    String::new()
                };
                return Err(format!(
                    "the {what} data changed since the run started: {then} then, {now} now{classes}"
                ));
            }
        }
        Ok(())
    }
}

/// The lock file of a run directory.
pub const LOCK: &str = "run.lock";

/// Holds a run directory for one process: `run.lock` holds its process id, and is removed when
/// the lock is dropped. A lock left by a process that no longer runs (killed) is taken over.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Creates `dir` if needed and locks it.
    ///
    /// # Errors
    ///
    /// The directory cannot be created or written (a read-only `--out` fails here, before any
    /// training), or another running process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock, ModelError> {
        let io = |source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id()).map_err(|source| ModelError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let pid = holder.trim().parse::<u32>().ok();
                    if pid.is_some_and(is_running) {
                        return Err(ModelError::Metadata {
                            path: dir.to_path_buf(),
                            reason: format!(
                                "another run (process {}) is writing into this directory",
                                holder.trim()
                            ),
                        });
                    }
                    // Left by a process that is gone: take it over.
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    return Err(ModelError::Io {
                        path: path.clone(),
                        source: e,
                    })
                }
            }
        }
        Err(ModelError::Metadata {
            path: dir.to_path_buf(),
            reason: format!("cannot take the run lock {}", path.display()),
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this id runs (Linux: `/proc/<pid>`; elsewhere every recorded holder
/// counts as running, and a stale lock file has to be removed by hand).
fn is_running(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_fails_and_a_stale_one_is_taken_over() {
        let dir = std::env::temp_dir().join(format!("mobilenet-lock-{}", std::process::id()));
        let lock = RunLock::acquire(&dir).expect("first lock");
        let err = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains("another run (process"), "{err}");
        drop(lock);
        assert!(
            !dir.join(LOCK).exists(),
            "dropping the lock removes the file"
        );
        // A lock left by a process that no longer exists (pid beyond the kernel's maximum).
        std::fs::write(dir.join(LOCK), "4294967295\n").expect("stale lock");
        if Path::new("/proc").is_dir() {
            let lock = RunLock::acquire(&dir).expect("a stale lock is taken over");
            drop(lock);
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
