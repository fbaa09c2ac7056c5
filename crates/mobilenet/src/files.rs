//! Reading input files: only regular files, so that a pipe, a device or a directory given as an
//! image or a model is refused up front instead of hanging (a FIFO) or reading until memory runs
//! out (`/dev/zero`).

use std::io;
use std::path::Path;

/// The whole of `path`, which must be a regular file (or a link to one).
pub(crate) fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device or a pipe)"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
    }
    std::fs::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_directories_are_refused() {
        let zero = Path::new("/dev/zero");
        if zero.exists() {
            let err = read_regular(zero).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(read_regular(dir).unwrap_err().to_string(), "a directory");
        let manifest = read_regular(&dir.join("Cargo.toml")).expect("a regular file reads");
        assert!(!manifest.is_empty());
    }
}
