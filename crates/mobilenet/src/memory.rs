//! How much memory this process may use, so that a run too large for the machine is refused
//! with the numbers before it allocates (`bench --batch 100000` and `--preset 4.0_4096` aborted
//! on allocation; an abort loses the message and, in training, the work).

/// A job that needs more memory than is available.
#[derive(Debug, thiserror::Error)]
#[error("{what} needs about {need_mb} MB of memory; {available_mb} MB are available")]
pub struct MemoryError {
    /// What was asked for.
    pub what: String,
    /// Megabytes it needs.
    pub need_mb: u64,
    /// Megabytes available.
    pub available_mb: u64,
}

/// Bytes available to this process: `MemAvailable` of `/proc/meminfo`, lowered to the room left
/// under a cgroup v2 memory limit; `None` where neither is known (then nothing is refused).
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let mut bytes = kb * 1024;
    let cgroup = |f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    if let (Some(max), Some(current)) = (cgroup("memory.max"), cgroup("memory.current")) {
        bytes = bytes.min(max.saturating_sub(current));
    }
    Some(bytes)
}

/// Refuses `need` bytes for `what` when they exceed what is available.
///
/// # Errors
///
/// [`MemoryError`] with both numbers.
pub fn check(need: u64, what: impl FnOnce() -> String) -> Result<(), MemoryError> {
    match available() {
        Some(have) if need > have => Err(MemoryError {
            what: what(),
            need_mb: need.div_ceil(1 << 20),
            available_mb: have >> 20,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_need_is_refused_with_the_numbers() {
        if available().is_none() {
            return; // not Linux: nothing to check against
        }
        let err = check(u64::MAX / 2, || "a test".into()).unwrap_err();
        assert!(err.to_string().starts_with("a test needs about"), "{err}");
        assert!(check(1 << 20, || unreachable!("1 MB is available")).is_ok());
    }
}
