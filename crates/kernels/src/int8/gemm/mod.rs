//! u8 × s8 matrix multiply with requantization: `C = requant(A·B + c·rowsum(A))`.
//!
//! B (`[k, n]`, given as `[n, k]`: one output channel's weights per row, OHWI) is packed once
//! into panels of [`NR`] = 32 columns; inside a panel, k runs in quads and each quad stores the
//! 32 columns' four bytes contiguously — the operand layout of `vpdpbusd`, which adds four
//! u8·s8 products into each i32 lane. A is read in place: one row per pixel, its four bytes of a
//! quad broadcast to every lane. K is zero-padded to a multiple of 4 in B; A's last partial
//! quad is assembled from the bytes that exist.
//!
//! AVX-512 VNNI computes a 12 × 32 tile in 24 registers and requantizes it in registers; AVX2
//! (16-bit multiply-adds, `avx2.rs`) a 3 × 16 tile in 12; scalar computes a row into memory and
//! requantizes it there.

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avxvnni;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod stem;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::IntIsaKind;
use super::{IntIsa, Requant};

/// Columns per packed panel.
pub const NR: usize = 32;

/// Rows per AVX-512 tile.
#[cfg(target_arch = "x86_64")]
const MR: usize = 12;

/// B packed for [`qgemm`].
#[derive(Clone, Debug)]
pub struct PackedQB {
    k: usize,
    n: usize,
    quads: usize,
    data: Vec<i8>,
    /// `128·Σ_k B[k, j]` per column (zeros past n): what the aarch64 kernels, which flip A's
    /// bytes to signed, add back.
    #[cfg(target_arch = "aarch64")]
    xor_sums: Vec<i32>,
    /// On CPUs with i8mm, B again in `usmmla`'s layout: per panel and octet of k, 16
    /// column pairs of 16 bytes (each column's 8 bytes of the octet); empty elsewhere.
    #[cfg(target_arch = "aarch64")]
    octets: Vec<i8>,
    /// For the AVX2 kernels: B widened to i16 with the first call's row coefficient folded
    /// in, made by that call.
    #[cfg(target_arch = "x86_64")]
    wide: std::sync::OnceLock<avx2::Wide>,
}

/// Equal when the packed weights are (the AVX2 form is a cache made from them).
impl PartialEq for PackedQB {
    fn eq(&self, other: &PackedQB) -> bool {
        (self.k, self.n, &self.data) == (other.k, other.n, &other.data)
    }
}

impl PackedQB {
    /// Packs `w`, `[n, k]` row-major (output channel `j`'s k weights at `w[j·k ..]`).
    ///
    /// # Panics
    ///
    /// If `w.len() != n · k`.
    pub fn new(w: &[i8], k: usize, n: usize) -> PackedQB {
        assert_eq!(w.len(), n * k, "weights must be n·k = {n}·{k} values");
        let quads = k.div_ceil(4);
        let panels = n.div_ceil(NR);
        let mut data = vec![0i8; panels * quads * NR * 4];
        for col in 0..n {
            let (p, j) = (col / NR, col % NR);
            for kk in 0..k {
                data[((p * quads + kk / 4) * NR + j) * 4 + kk % 4] = w[col * k + kk];
            }
        }
        PackedQB {
            k,
            n,
            quads,
            data,
            #[cfg(target_arch = "aarch64")]
            xor_sums: (0..panels * NR)
                .map(|j| match j < n {
                    true => 128 * w[j * k..][..k].iter().map(|&v| v as i32).sum::<i32>(),
                    false => 0,
                })
                .collect(),
            #[cfg(target_arch = "x86_64")]
            wide: std::sync::OnceLock::new(),
            #[cfg(target_arch = "aarch64")]
            octets: match super::IntIsaKind::NeonI8mm.is_supported() {
                true => neon::pack_octets(w, k, n),
                false => Vec::new(),
            },
        }
    }

    /// Depth (the summed dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of [`NR`]-column panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// The weight of column `col` at depth `kk`.
    fn at(&self, kk: usize, col: usize) -> i32 {
        self.data[((col / NR * self.quads + kk / 4) * NR + col % NR) * 4 + kk % 4] as i32
    }
}

/// `C[i, j] = rq(Σ_k A[i, k]·B[k, j] + row_coeff·Σ_k A[i, k])` for rows `0..m` and the columns
/// of panels `panels` (`C[i, j]` at `c[i·ldc + j]`: C's row holds every column).
///
/// # Panics
///
/// If a slice is shorter than its shape says, `rq` has not `b.n()` channels, or the panel
/// range is past B's.
#[allow(clippy::too_many_arguments)] // a GEMM's shape is this many numbers
pub fn qgemm(
    isa: IntIsa,
    m: usize,
    a: &[u8],
    lda: usize,
    b: &PackedQB,
    row_coeff: i32,
    rq: &Requant,
    c: &mut [u8],
    ldc: usize,
    panels: Range<usize>,
) {
    // The other checks are qgemm_ptr's; C's length is the one a pointer cannot carry.
    let n = b.n;
    assert!(
        m == 0 || (ldc >= n && c.len() >= (m - 1) * ldc + n),
        "C shorter than m·ldc"
    );
    // Safety: C covers m rows of ldc bytes (checked above) and is borrowed mutably here.
    unsafe {
        qgemm_ptr(
            isa,
            m,
            a,
            lda,
            b,
            row_coeff,
            rq,
            c.as_mut_ptr(),
            ldc,
            panels,
        )
    }
}

/// [`qgemm`] writing through a pointer, for threads that share C and split its columns.
///
/// # Safety
///
/// `c` must be valid for writes of rows `0..m` (stride `ldc ≥ b.n()`) in the columns of
/// `panels`, and nothing else may access those bytes during the call. The other checks of
/// [`qgemm`] are made here too.
#[allow(clippy::too_many_arguments)]
pub unsafe fn qgemm_ptr(
    isa: IntIsa,
    m: usize,
    a: &[u8],
    lda: usize,
    b: &PackedQB,
    row_coeff: i32,
    rq: &Requant,
    c: *mut u8,
    ldc: usize,
    panels: Range<usize>,
) {
    let (k, n) = (b.k, b.n);
    assert_eq!(
        rq.len(),
        n,
        "requantization for {} channels, B has {n}",
        rq.len()
    );
    assert!(
        panels.end <= b.panels() && panels.start <= panels.end,
        "panels past B"
    );
    if m == 0 || panels.is_empty() {
        return;
    }
    assert!(
        lda >= k && a.len() >= (m - 1) * lda + k,
        "A shorter than m·lda"
    );
    assert!(ldc >= n, "ldc shorter than a row of C");
    let job = Job {
        m,
        a: a.as_ptr(),
        lda,
        b,
        row_coeff,
        rq,
        c,
        ldc,
        panels,
    };
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        IntIsaKind::Amx => {
            // Safety: the CPU has AMX and AVX-512 VNNI, the tile state is granted; A checked
            // above, C by the caller.
            unsafe { amx::gemm(job) }
        }
        #[cfg(target_arch = "x86_64")]
        _ if isa.avx512() => {
            // Safety: the CPU has AVX-512 VNNI; A checked above, C by the caller.
            unsafe { vnni::gemm(job) }
        }
        #[cfg(target_arch = "x86_64")]
        IntIsaKind::AvxVnni => {
            // Safety: the CPU has AVX2 and AVX-VNNI; A checked above, C by the caller.
            unsafe { avxvnni::gemm(job) }
        }
        #[cfg(target_arch = "x86_64")]
        IntIsaKind::Avx2 => {
            // Safety: the CPU has AVX2; A checked above, C by the caller.
            unsafe { avx2::gemm(job) }
        }
        #[cfg(target_arch = "aarch64")]
        IntIsaKind::NeonI8mm => {
            // Safety: the CPU has i8mm (so B was packed for it); A checked above, C by the
            // caller.
            unsafe { neon::gemm(job, neon::Form::Mmla) }
        }
        #[cfg(target_arch = "aarch64")]
        IntIsaKind::NeonDot => {
            // Safety: the CPU has the dot product; A checked above, C by the caller.
            unsafe { neon::gemm(job, neon::Form::Dot) }
        }
        #[cfg(target_arch = "aarch64")]
        IntIsaKind::Neon => {
            // Safety: A checked above, C by the caller.
            unsafe { neon::gemm(job, neon::Form::Mull) }
        }
        // Safety: A checked above, C by the caller.
        _ => unsafe { portable(job) },
    }
}

/// One call of [`qgemm_ptr`] as its variants take it, checked: `m` rows of `b.k()` bytes of A
/// at stride `lda`, C valid for writes of those rows (stride `ldc`) in the columns of `panels`.
#[derive(Clone)]
struct Job<'a> {
    m: usize,
    a: *const u8,
    lda: usize,
    b: &'a PackedQB,
    row_coeff: i32,
    rq: &'a Requant,
    c: *mut u8,
    ldc: usize,
    panels: Range<usize>,
}

impl Job<'_> {
    /// Row `i` of A, `b.k()` bytes.
    ///
    /// # Safety
    ///
    /// `i < m`.
    unsafe fn a_row(&self, i: usize) -> &[u8] {
        // Safety: qgemm_ptr checked that A holds m rows of k bytes at stride lda.
        unsafe { std::slice::from_raw_parts(self.a.add(i * self.lda), self.b.k) }
    }

    /// The row's term of a uint8 B's zero point: `row_coeff·Σ row`.
    fn row_term(&self, row: &[u8]) -> i32 {
        match self.row_coeff {
            0 => 0,
            coeff => coeff.wrapping_mul(row.iter().map(|&v| v as i32).sum::<i32>()),
        }
    }

    /// C's byte at row `i`, column `j`.
    fn c_at(&self, i: usize, j: usize) -> *mut u8 {
        self.c.wrapping_add(i * self.ldc + j)
    }
}

/// Scalar: each 1 × 32 tile is accumulated into memory, then requantized.
///
/// # Safety
///
/// As [`qgemm_ptr`].
unsafe fn portable(job: Job) {
    let b = job.b;
    let mut acc = [0i32; NR];
    for i in 0..job.m {
        // Safety: i < m.
        let row = unsafe { job.a_row(i) };
        let add = job.row_term(row);
        for p in job.panels.clone() {
            let cols = (b.n - p * NR).min(NR);
            let panel = &b.data[p * b.quads * NR * 4..][..b.quads * NR * 4];
            scalar_tile(row, panel, &mut acc);
            // Safety: row i's columns of panel p are the caller's to write.
            let out = unsafe { std::slice::from_raw_parts_mut(job.c_at(i, p * NR), cols) };
            job.rq.row(IntIsa::SCALAR, &acc[..cols], add, p * NR, out);
        }
    }
}

fn scalar_tile(row: &[u8], panel: &[i8], acc: &mut [i32; NR]) {
    acc.fill(0);
    for (kk, &x) in row.iter().enumerate() {
        let quad = &panel[kk / 4 * NR * 4..][..NR * 4];
        for (j, a) in acc.iter_mut().enumerate() {
            *a += x as i32 * quad[j * 4 + kk % 4] as i32;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni;

#[cfg(target_arch = "x86_64")]
mod amx;

/// The definition: `C[i, j] = rq(Σ_k A[i, k]·B[k, j] + row_coeff·Σ_k A[i, k])`, all columns.
#[allow(clippy::too_many_arguments)]
pub fn qgemm_reference(
    m: usize,
    a: &[u8],
    lda: usize,
    b: &PackedQB,
    row_coeff: i32,
    rq: &Requant,
    c: &mut [u8],
    ldc: usize,
) {
    for i in 0..m {
        let row = &a[i * lda..][..b.k];
        let sum: i32 = row.iter().map(|&v| v as i32).sum();
        for j in 0..b.n {
            let dot: i32 = row
                .iter()
                .enumerate()
                .map(|(kk, &x)| x as i32 * b.at(kk, j))
                .sum();
            c[i * ldc + j] = rq.apply(j, dot + row_coeff * sum);
        }
    }
}

#[cfg(test)]
mod tests;
