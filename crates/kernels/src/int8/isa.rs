//! Run-time detection of the integer instruction sets.

use std::fmt;
use std::sync::OnceLock;

/// The kinds of instruction set an integer kernel variant is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntIsaKind {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2: 16-bit multiply-adds (`vpmaddwd`), 8 i32 lanes.
    Avx2,
    /// x86-64 AVX-VNNI without AVX-512 (Intel's client cores from Alder Lake on): the
    /// 256-bit `vpdpbusd`, 8 lanes, for the GEMMs; the other kernels are AVX2's.
    AvxVnni,
    /// x86-64 AVX-512 with VNNI: `vpdpbusd` (four u8·s8 products per i32 lane), 16 lanes.
    Avx512Vnni,
    /// AVX-512 VNNI plus AMX tiles (`tdpbusd`: a 16×64 by 64×16 byte product per
    /// instruction) for the GEMMs whose depth is a multiple of 64; Linux only (the kernel
    /// must grant the tile state).
    Amx,
    /// aarch64 Advanced SIMD without the dot-product extension (Cortex-A53/A72: Raspberry Pi
    /// 3 and 4): 8 u8·s8 products widened to i16 (`smull`), pairs added into i32 (`sadalp`).
    Neon,
    /// aarch64 with the dot-product extension (`sdot`: four s8·s8 products per i32 lane;
    /// Cortex-A55/A76 and later, Graviton 2, Apple M1).
    NeonDot,
    /// aarch64 with the int8 matrix multiply extension (`usmmla`: a 2×8 u8 by 8×2 s8 product
    /// per instruction; Graviton 3, Cortex-A510/A710 and later).
    NeonI8mm,
}

impl IntIsaKind {
    /// Whether this CPU can run `self`.
    pub fn is_supported(self) -> bool {
        match self {
            IntIsaKind::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            IntIsaKind::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            IntIsaKind::AvxVnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            IntIsaKind::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            IntIsaKind::Amx => IntIsaKind::Avx512Vnni.is_supported() && amx_granted(),
            #[cfg(not(target_arch = "x86_64"))]
            IntIsaKind::Avx2 | IntIsaKind::AvxVnni | IntIsaKind::Avx512Vnni | IntIsaKind::Amx => {
                false
            }
            IntIsaKind::Neon => cfg!(target_arch = "aarch64"),
            #[cfg(target_arch = "aarch64")]
            IntIsaKind::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "aarch64")]
            IntIsaKind::NeonI8mm => {
                std::arch::is_aarch64_feature_detected!("dotprod")
                    && std::arch::is_aarch64_feature_detected!("i8mm")
            }
            #[cfg(not(target_arch = "aarch64"))]
            IntIsaKind::NeonDot | IntIsaKind::NeonI8mm => false,
        }
    }
}

/// An integer instruction set this CPU supports. Like [`crate::Isa`], a value cannot be built
/// by hand, only from [`IntIsa::detect`], [`IntIsa::available`] or [`IntIsa::SCALAR`], so the
/// kernels never meet one the CPU lacks: each kind runs its variant (a kind without a variant
/// of its own in some kernel runs the next one down: AMX's depthwise is VNNI's), no fallback
/// at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntIsa(IntIsaKind);

impl IntIsa {
    /// Portable Rust: every CPU runs it.
    pub const SCALAR: IntIsa = IntIsa(IntIsaKind::Scalar);

    /// The best variant this CPU runs, detected once. `MOBILENET_INT_ISA=<name>` (`scalar`,
    /// `avx2`, `avxvnni`, `avx512vnni`, `amx`, `neon`, `neondot`, `i8mm`) forces another it has — a machine with AMX can measure its
    /// VNNI path; a name it lacks is reported on stderr and the best is used.
    pub fn detect() -> IntIsa {
        static BEST: OnceLock<IntIsa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let available = IntIsa::available();
            let best = available.iter().copied().max().unwrap_or(IntIsa::SCALAR);
            crate::isa::forced("MOBILENET_INT_ISA", &available, IntIsa::name).unwrap_or(best)
        })
    }

    /// Every variant this CPU runs, scalar first.
    pub fn available() -> Vec<IntIsa> {
        [
            IntIsaKind::Scalar,
            IntIsaKind::Avx2,
            IntIsaKind::AvxVnni,
            IntIsaKind::Avx512Vnni,
            IntIsaKind::Amx,
            IntIsaKind::Neon,
            IntIsaKind::NeonDot,
            IntIsaKind::NeonI8mm,
        ]
        .into_iter()
        .filter(|i| i.is_supported())
        .map(IntIsa)
        .collect()
    }

    /// Which instruction set this is.
    pub fn kind(self) -> IntIsaKind {
        self.0
    }

    /// Whether the AVX2 kernels run (on their own, or beside AVX-VNNI's GEMM).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx2(self) -> bool {
        matches!(self.0, IntIsaKind::Avx2 | IntIsaKind::AvxVnni)
    }

    /// Whether the AVX-512 kernels (VNNI, or AMX's companions) run.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx512(self) -> bool {
        matches!(self.0, IntIsaKind::Avx512Vnni | IntIsaKind::Amx)
    }

    /// Whether the aarch64 kernels (any of the three) run.
    #[cfg(target_arch = "aarch64")]
    pub(crate) fn neon(self) -> bool {
        matches!(
            self.0,
            IntIsaKind::Neon | IntIsaKind::NeonDot | IntIsaKind::NeonI8mm
        )
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self.0 {
            IntIsaKind::Scalar => "scalar",
            IntIsaKind::Avx2 => "avx2",
            IntIsaKind::AvxVnni => "avxvnni",
            IntIsaKind::Avx512Vnni => "avx512vnni",
            IntIsaKind::Amx => "amx",
            IntIsaKind::Neon => "neon",
            IntIsaKind::NeonDot => "neondot",
            IntIsaKind::NeonI8mm => "i8mm",
        }
    }
}

/// Whether the CPU has AMX-INT8 tiles and the kernel lets this process use them (asked once:
/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
#[cfg(target_arch = "x86_64")]
fn amx_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID.(7,0):EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        if edx & (1 << 24) == 0 || edx & (1 << 25) == 0 {
            return false;
        }
        request_tile_state()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // Safety: arch_prctl with these arguments only changes this process's permissions.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

impl fmt::Display for IntIsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
