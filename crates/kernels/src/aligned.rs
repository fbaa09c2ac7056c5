//! A zero-initialised `f32` buffer whose first element sits on a 64-byte boundary.
//!
//! The allocator returns large blocks at 16 bytes past a boundary, so with a plain `Vec` every
//! 64-byte vector load from an activation or a packed weight panel straddles two cache lines,
//! and split loads cost two L1 accesses. Aligning the start aligns every row, pixel and panel
//! whose offset is a multiple of 16 values.

use std::ops::{Deref, DerefMut};

/// Alignment in bytes: one cache line, one AVX-512 vector.
pub const ALIGN: usize = 64;
const PAD: usize = ALIGN / std::mem::size_of::<f32>();

/// A fixed-length `f32` buffer aligned to [`ALIGN`] bytes; dereferences to a slice.
pub struct AlignedVec {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl AlignedVec {
    /// An empty buffer (no allocation).
    pub const fn new() -> AlignedVec {
        AlignedVec {
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// `len` zeros.
    pub fn zeros(len: usize) -> AlignedVec {
        let buf = vec![0.0f32; len + PAD];
        let misalign = buf.as_ptr() as usize % ALIGN;
        let start = if misalign == 0 {
            0
        } else {
            (ALIGN - misalign) / std::mem::size_of::<f32>()
        };
        AlignedVec { buf, start, len }
    }

    /// A copy of `values`, aligned.
    pub fn from_slice(values: &[f32]) -> AlignedVec {
        let mut v = AlignedVec::zeros(values.len());
        v.copy_from_slice(values);
        v
    }

    /// Makes the buffer `len` long, keeping its memory when that holds `len` values. The values
    /// are left as they were (zero where new): for callers that overwrite them all.
    pub fn set_len(&mut self, len: usize) {
        if len <= self.buf.len() - self.start {
            self.len = len;
        } else {
            *self = AlignedVec::zeros(len);
        }
    }

    /// Makes the buffer at least `len` long (new values zero; existing ones kept).
    pub fn grow(&mut self, len: usize) {
        if len > self.len {
            let mut bigger = AlignedVec::zeros(len);
            bigger[..self.len].copy_from_slice(self);
            *self = bigger;
        }
    }
}

impl Default for AlignedVec {
    fn default() -> AlignedVec {
        AlignedVec::new()
    }
}

impl Deref for AlignedVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl Clone for AlignedVec {
    /// A new allocation has its own misalignment: copy into a freshly aligned buffer.
    fn clone(&self) -> AlignedVec {
        AlignedVec::from_slice(self)
    }
}

impl PartialEq for AlignedVec {
    fn eq(&self, other: &AlignedVec) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for AlignedVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedVec({} values)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_keeps_values() {
        for len in [0, 1, 15, 16, 17, 1000, 1 << 20] {
            let mut v = AlignedVec::zeros(len);
            assert_eq!(v.len(), len);
            assert_eq!(v.as_ptr() as usize % ALIGN, 0, "len {len}");
            assert!(v.iter().all(|&x| x == 0.0));
            if len > 0 {
                v[len - 1] = 3.0;
                v.grow(len + 5);
                assert_eq!(v.len(), len + 5);
                assert_eq!(v[len - 1], 3.0);
                assert_eq!(v.as_ptr() as usize % ALIGN, 0);
                let c = v.clone();
                assert_eq!(c, v);
                assert_eq!(c.as_ptr() as usize % ALIGN, 0);
            }
        }
    }
}
