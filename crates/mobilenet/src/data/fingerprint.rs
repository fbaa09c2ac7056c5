//! A data set's fingerprint: what a resumed run checks to be sure it trains on the same data.

use serde::{Deserialize, Serialize};

use super::{Dataset, Source};

/// Size, classes and a hash of a data set's content: class names, labels, and each image's
/// pixels (data held in memory) or file path and size (image folders).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Images in the set.
    pub images: usize,
    /// Class names.
    pub classes: Vec<String>,
    /// FNV-1a over the content, as 16 hex digits.
    pub hash: String,
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} images in {} classes (content {})",
            self.images,
            self.classes.len(),
            self.hash
        )
    }
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
}

impl Dataset {
    /// The set's [`Fingerprint`]. Reads no image file: a file counts by its path and size.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Fnv(0xCBF2_9CE4_8422_2325);
        for c in self.classes.iter() {
            h.bytes(c.as_bytes());
            h.bytes(&[0]);
        }
        for &j in self.indices.iter() {
            h.bytes(&(self.labels[j] as u64).to_le_bytes());
            match (&*self.source, self.source.raw(j)) {
                (_, Some(pixels)) => h.bytes(pixels),
                (Source::Files(files), None) => {
                    h.bytes(files[j].to_string_lossy().as_bytes());
                    let size = std::fs::metadata(&files[j]).map_or(u64::MAX, |m| m.len());
                    h.bytes(&size.to_le_bytes());
                }
                (Source::Pixels { .. }, None) => {}
            }
        }
        Fingerprint {
            images: self.len(),
            classes: self.classes.to_vec(),
            hash: format!("{:016x}", h.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_data_has_the_same_fingerprint_and_other_data_another() {
        let all = Dataset::builtin_fashion_mnist();
        let (a, b) = all.split(100, 1);
        assert_eq!(a.fingerprint(), all.split(100, 1).0.fingerprint());
        assert_ne!(a.fingerprint().hash, all.split(100, 2).0.fingerprint().hash);
        assert_eq!(b.fingerprint().images, 100);
        assert_eq!(b.fingerprint().classes.len(), 10);
    }
}
