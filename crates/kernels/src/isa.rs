//! Run-time instruction-set detection.

use std::fmt;
use std::sync::OnceLock;

/// The vector instruction set a kernel variant is written for.
///
/// Ordered from least to most capable on each architecture, so `best >= Isa::Avx2Fma`
/// reads as "AVX2 with FMA or better".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, no explicit vector instructions (the reference path).
    Scalar,
    /// aarch64 Advanced SIMD, 4 f32 lanes (always present on aarch64).
    Neon,
    /// x86-64 AVX2 with FMA3, 8 f32 lanes.
    Avx2Fma,
    /// x86-64 AVX-512 F, 16 f32 lanes.
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU supports, detected once and cached.
    pub fn detect() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(detect_uncached)
    }

    /// Every instruction set this CPU can run, from `Scalar` up to [`Isa::detect`].
    /// Tests iterate this list to check each variant against the scalar reference.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Neon, Isa::Avx2Fma, Isa::Avx512]
            .into_iter()
            .filter(|isa| isa.is_supported())
            .collect()
    }

    /// Whether this CPU can run code written for `self`.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Neon => cfg!(target_arch = "aarch64"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2Fma.is_supported() && std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2Fma | Isa::Avx512 => false,
        }
    }

    /// Number of f32 lanes in one vector register of this instruction set.
    pub fn f32_lanes(self) -> usize {
        match self {
            Isa::Scalar => 1,
            Isa::Neon => 4,
            Isa::Avx2Fma => 8,
            Isa::Avx512 => 16,
        }
    }

    /// Short lowercase name used in kernel names and reports (`avx512`, `avx2fma`, …).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Neon => "neon",
            Isa::Avx2Fma => "avx2fma",
            Isa::Avx512 => "avx512",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn detect_uncached() -> Isa {
    Isa::available().into_iter().max().unwrap_or(Isa::Scalar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detected_isa_is_supported_and_last_of_available() {
        let best = Isa::detect();
        assert!(best.is_supported());
        let available = Isa::available();
        assert_eq!(available.first(), Some(&Isa::Scalar));
        assert_eq!(available.last(), Some(&best));
    }

    #[test]
    fn x86_and_arm_variants_are_exclusive() {
        let available = Isa::available();
        let has_x86 = available
            .iter()
            .any(|i| matches!(i, Isa::Avx2Fma | Isa::Avx512));
        let has_arm = available.contains(&Isa::Neon);
        assert!(!(has_x86 && has_arm));
    }
}
