//! Run-time instruction-set detection, and the one rule that picks a kernel variant from it.
//!
//! An [`Isa`] value is proof that this CPU runs that instruction set: it cannot be built by
//! hand, only obtained from [`Isa::detect`], [`Isa::available`] or [`Isa::SCALAR`]. So a kernel
//! never meets an instruction set the CPU lacks, and there is no fallback to decide: every
//! kernel family dispatches through [`simd_dispatch!`](crate::simd_dispatch), which maps each
//! kind to its variant, compiled with that set's target features.

use std::fmt;
use std::sync::OnceLock;

/// The kinds of vector instruction set a kernel variant is written for.
///
/// Ordered from least to most capable on each architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IsaKind {
    /// Portable Rust, no explicit vector instructions (the reference path).
    Scalar,
    /// aarch64 Advanced SIMD, 4 f32 lanes (always present on aarch64).
    Neon,
    /// WebAssembly SIMD128, 4 f32 lanes: present when the module was built with `simd128`
    /// (WebAssembly cannot test for it at run time; see `simd::Wasm128`).
    Wasm128,
    /// x86-64 AVX2 with FMA3, 8 f32 lanes.
    Avx2Fma,
    /// x86-64 AVX-512 F, 16 f32 lanes.
    Avx512,
}

impl IsaKind {
    /// Whether this CPU can run code written for `self`.
    pub fn is_supported(self) -> bool {
        match self {
            IsaKind::Scalar => true,
            IsaKind::Neon => cfg!(target_arch = "aarch64"),
            IsaKind::Wasm128 => cfg!(all(target_arch = "wasm32", target_feature = "simd128")),
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx512 => {
                IsaKind::Avx2Fma.is_supported() && std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            IsaKind::Avx2Fma | IsaKind::Avx512 => false,
        }
    }
}

/// An instruction set this CPU supports (see the module docs).
///
/// Ordered like [`IsaKind`], so `best > Isa::SCALAR` reads as "some vector set".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Isa(IsaKind);

impl Isa {
    /// Portable Rust: every CPU runs it.
    pub const SCALAR: Isa = Isa(IsaKind::Scalar);

    /// The best instruction set this CPU supports, detected once and cached.
    ///
    /// `MOBILENET_ISA=<name>` (`scalar`, `neon`, `wasm128`, `avx2fma`, `avx512`) forces another variant
    /// this CPU has, to measure it; a name it lacks is reported on stderr and the best is used.
    pub fn detect() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let available = Isa::available();
            let best = available.iter().copied().max().unwrap_or(Isa::SCALAR);
            forced("MOBILENET_ISA", &available, Isa::name).unwrap_or(best)
        })
    }

    /// Every instruction set this CPU can run, from `Scalar` up to [`Isa::detect`].
    /// Tests iterate this list to check each variant against the scalar reference.
    pub fn available() -> Vec<Isa> {
        [
            IsaKind::Scalar,
            IsaKind::Neon,
            IsaKind::Wasm128,
            IsaKind::Avx2Fma,
            IsaKind::Avx512,
        ]
        .into_iter()
        .filter(|kind| kind.is_supported())
        .map(Isa)
        .collect()
    }

    /// The instruction set of a given kind, if this CPU runs it.
    pub fn of_kind(kind: IsaKind) -> Option<Isa> {
        kind.is_supported().then_some(Isa(kind))
    }

    /// Which instruction set this is.
    pub fn kind(self) -> IsaKind {
        self.0
    }

    /// Number of f32 lanes in one vector register of this instruction set.
    pub fn f32_lanes(self) -> usize {
        match self.0 {
            IsaKind::Scalar => 1,
            IsaKind::Neon | IsaKind::Wasm128 => 4,
            IsaKind::Avx2Fma => 8,
            IsaKind::Avx512 => 16,
        }
    }

    /// Short lowercase name used in kernel names and reports (`avx512`, `avx2fma`, …).
    pub fn name(self) -> &'static str {
        match self.0 {
            IsaKind::Scalar => "scalar",
            IsaKind::Neon => "neon",
            IsaKind::Wasm128 => "wasm128",
            IsaKind::Avx2Fma => "avx2fma",
            IsaKind::Avx512 => "avx512",
        }
    }
}

/// The variant the environment variable `var` names, if it is set: `None` when unset, and
/// when it names nothing in `available` (said on stderr, with the choices).
pub(crate) fn forced<T: Copy>(
    var: &str,
    available: &[T],
    name: impl Fn(T) -> &'static str,
) -> Option<T> {
    let wanted = std::env::var(var).ok()?;
    let pick = choose(available, &name, &wanted);
    if pick.is_none() {
        let names: Vec<&str> = available.iter().map(|&i| name(i)).collect();
        eprintln!(
            "{var}={wanted}: not an instruction set this CPU runs (it runs {}); using the best",
            names.join(", ")
        );
    }
    pick
}

/// The one of `available` called `wanted`.
fn choose<T: Copy>(available: &[T], name: &impl Fn(T) -> &'static str, wanted: &str) -> Option<T> {
    available
        .iter()
        .copied()
        .find(|&i| name(i) == wanted.trim())
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Calls the variant of an f32 kernel family that `isa` selects: the generic function for the
/// instruction set, given its token ([`crate::simd`]) and `args`, inside a wrapper compiled
/// with that set's target features (so the generic body, `#[inline(always)]`, is compiled for
/// it). The per-set wrappers are generated here and nowhere else.
///
/// ```ignore
/// simd_dispatch!(isa, (g: &ConvGeometry, out: &mut [f32]) {
///     avx512: rows::<_, 8>, avx2: rows::<_, 4>, neon: rows::<_, 4>, wasm: rows::<_, 4>,
///     scalar: rows::<_, 4>,
/// })
/// simd_dispatch!(isa, (job: &mut Job<'_>) => run_generic) // the same function for all
/// ```
///
/// The variants are `unsafe fn`s or safe ones; the caller's safety comment states what the
/// arguments guarantee (slices as long as their shapes, pointers covering them).
#[macro_export]
#[doc(hidden)]
macro_rules! simd_dispatch {
    // One generic function for every instruction set.
    ($isa:expr, ($($arg:ident: $ty:ty),* $(,)?) => $f:expr) => {
        $crate::simd_dispatch!($isa, ($($arg: $ty),*) {
            avx512: $f, avx2: $f, neon: $f, wasm: $f, scalar: $f,
        })
    };
    ($isa:expr, ($($arg:ident: $ty:ty),* $(,)?) {
        avx512: $f512:expr, avx2: $favx2:expr, neon: $fneon:expr, wasm: $fwasm:expr,
        scalar: $fscalar:expr $(,)?
    }) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx2,fma")]
        #[allow(clippy::too_many_arguments, unused_unsafe)]
        unsafe fn avx512($($arg: $ty),*) {
            // Safety: AVX-512 F is enabled here, and an `Isa` of this kind exists only on CPUs
            // that have it; the arguments are the caller's, forwarded.
            unsafe { $f512($crate::simd::Avx512, $($arg),*) }
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments, unused_unsafe)]
        unsafe fn avx2($($arg: $ty),*) {
            // Safety: AVX2 and FMA are enabled here, and the CPU has them (as above).
            unsafe { $favx2($crate::simd::Avx2Fma, $($arg),*) }
        }
        #[allow(unused_unsafe)]
        // Safety: the variant for `isa`'s kind runs on a CPU that has it (an `Isa` cannot be
        // made otherwise); the arguments are the caller's, forwarded.
        unsafe {
            match $crate::Isa::kind($isa) {
                #[cfg(target_arch = "x86_64")]
                $crate::IsaKind::Avx512 => avx512($($arg),*),
                #[cfg(target_arch = "x86_64")]
                $crate::IsaKind::Avx2Fma => avx2($($arg),*),
                #[cfg(target_arch = "aarch64")]
                $crate::IsaKind::Neon => $fneon($crate::simd::Neon, $($arg),*),
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                $crate::IsaKind::Wasm128 => $fwasm($crate::simd::Wasm128, $($arg),*),
                // Kinds of the other architecture cannot occur (no `Isa` of them exists here).
                _ => $fscalar($crate::simd::Scalar, $($arg),*),
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detected_isa_is_supported_and_last_of_available() {
        let best = Isa::detect();
        assert!(best.kind().is_supported());
        let available = Isa::available();
        assert_eq!(available.first(), Some(&Isa::SCALAR));
        assert_eq!(available.last(), Some(&best));
    }

    #[test]
    fn a_module_built_with_simd128_runs_it() {
        let simd128 = cfg!(all(target_arch = "wasm32", target_feature = "simd128"));
        assert_eq!(Isa::of_kind(IsaKind::Wasm128).is_some(), simd128);
        if simd128 {
            assert_eq!(Isa::detect().kind(), IsaKind::Wasm128);
        }
    }

    #[test]
    fn x86_and_arm_variants_are_exclusive() {
        let available = Isa::available();
        let has_x86 = available
            .iter()
            .any(|i| matches!(i.kind(), IsaKind::Avx2Fma | IsaKind::Avx512));
        let has_arm = available.iter().any(|i| i.kind() == IsaKind::Neon);
        assert!(!(has_x86 && has_arm));
    }

    #[test]
    fn only_supported_kinds_make_an_isa() {
        for kind in [
            IsaKind::Scalar,
            IsaKind::Neon,
            IsaKind::Wasm128,
            IsaKind::Avx2Fma,
            IsaKind::Avx512,
        ] {
            assert_eq!(
                Isa::of_kind(kind).is_some(),
                kind.is_supported(),
                "{kind:?}"
            );
        }
    }
}

#[cfg(test)]
mod forced_tests {
    use super::*;

    #[test]
    fn a_forced_name_picks_that_variant_or_nothing() {
        let available = Isa::available();
        assert_eq!(choose(&available, &Isa::name, "scalar"), Some(Isa::SCALAR));
        assert_eq!(
            choose(&available, &Isa::name, " scalar\n"),
            Some(Isa::SCALAR)
        );
        assert_eq!(choose(&available, &Isa::name, "sse9"), None);
        let best = *available.last().expect("scalar at least");
        assert_eq!(choose(&available, &Isa::name, best.name()), Some(best));
    }
}
