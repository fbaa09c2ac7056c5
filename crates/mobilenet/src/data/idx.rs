//! IDX files (MNIST, Fashion-MNIST): parsed from their bytes, gzipped or not, with the sizes the
//! header declares checked before the data is read.

use std::io::Read;
use std::path::Path;

use super::{io_err, DataError};

/// Reads an IDX file (see [`parse_idx`]), gzipped or not.
pub(super) fn read_idx(path: &Path, dims: usize) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let raw = crate::files::read_regular(path).map_err(io_err(path))?;
    parse_idx(&raw, path, dims)
}

/// Parses an IDX file of unsigned bytes — magic `00 00 08 <dims>`, big-endian sizes, then the
/// data — un-gzipping it first when it starts with the gzip magic. The sizes the header
/// declares are checked against the data (and, for gzip, against the free memory) before the
/// data is read, so a small file that claims or inflates to gigabytes is refused, not
/// allocated.
pub(super) fn parse_idx(
    bytes: &[u8],
    path: &Path,
    dims: usize,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bad = |reason: String| DataError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let gzipped = bytes.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read + '_> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let unzip = |e: std::io::Error| bad(format!("bad gzip data: {e}"));
    let mut header = vec![0u8; 4 + 4 * dims];
    let mut got = 0;
    while got < header.len() {
        match reader.read(&mut header[got..]).map_err(unzip)? {
            0 => break,
            n => got += n,
        }
    }
    if got < 4 || header[..3] != [0, 0, 0x08] {
        return Err(bad("not an IDX file of unsigned bytes".into()));
    }
    if header[3] as usize != dims {
        return Err(bad(format!(
            "IDX file has {} dimensions, expected {dims}",
            header[3]
        )));
    }
    if got < header.len() {
        return Err(bad("IDX header is truncated".into()));
    }
    let shape: Vec<usize> = header[4..]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("IDX sizes overflow".into()))?;
    if gzipped {
        crate::memory::check(count as u64, || {
            format!("{}'s {shape:?} bytes", path.display())
        })
        .map_err(|e| bad(e.to_string()))?;
    } else if bytes.len() - header.len() != count {
        return Err(bad(format!(
            "IDX data holds {} bytes, the header says {count}",
            bytes.len() - header.len()
        )));
    }
    // One byte more than declared, to tell a longer file from an exact one.
    let mut data = Vec::new();
    reader
        .take(count as u64 + 1)
        .read_to_end(&mut data)
        .map_err(unzip)?;
    if data.len() != count {
        let holds = match data.len() > count {
            true => format!("more than {count}"),
            false => data.len().to_string(),
        };
        return Err(bad(format!(
            "IDX data holds {holds} bytes, the header says {count}"
        )));
    }
    Ok((shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    }

    /// A gzipped IDX file is checked against what its header declares before its data is
    /// read: a few bytes claiming terabytes, or less data than declared, are errors.
    #[test]
    fn gzipped_idx_sizes_are_checked_before_reading() {
        let p = Path::new("bomb-images-idx3-ubyte.gz");
        let mut header = vec![0, 0, 8, 3];
        for d in [1u32 << 20, 1 << 12, 1 << 12] {
            header.extend_from_slice(&d.to_be_bytes());
        }
        let err = parse_idx(&gzip(&header), p, 3).unwrap_err().to_string();
        assert!(
            err.contains("bomb-images-idx3-ubyte.gz") && err.contains("MB"),
            "{err}"
        );

        let mut short = vec![0, 0, 8, 3];
        for d in [1000u32, 28, 28] {
            short.extend_from_slice(&d.to_be_bytes());
        }
        short.extend(std::iter::repeat_n(7u8, 10 * 784));
        let err = parse_idx(&gzip(&short), p, 3).unwrap_err().to_string();
        assert!(
            err.contains("IDX data holds 7840 bytes, the header says 784000"),
            "{err}"
        );
        short.push(0);
        short[7] = 10; // 10 images declared, 7841 bytes present
        short[6] = 0;
        let err = parse_idx(&gzip(&short), p, 3).unwrap_err().to_string();
        assert!(err.contains("holds more than 7840 bytes"), "{err}");
        short.pop();
        let (shape, data) = parse_idx(&gzip(&short), p, 3).expect("a whole file parses");
        assert_eq!((shape, data.len()), (vec![10, 28, 28], 7840));
        let err = parse_idx(&gzip(&short)[..30], p, 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad gzip data"), "{err}");
    }
}
