//! f32 matrix multiply `C = epilogue(A · B)` with B packed once, for 1×1 convolutions and
//! fully connected layers.
//!
//! In NHWC a 1×1 convolution is a GEMM of `[pixels, Cin] × [Cin, Cout]`. The weights (B) are
//! packed at load time into column panels of `NR = 2·LANES` columns, each stored as K rows of
//! NR contiguous values (zero padded on the right), so the microkernel reads B with full-vector
//! loads and never repacks. A is read in place (rows of one pixel's channels).
//!
//! The microkernel computes an `MR × NR` tile of C in registers, then adds the bias, clamps and
//! stores it: the epilogue costs no extra pass over memory. Register budget: AVX-512 has 32
//! vector registers, so MR = 12 rows × 2 vectors = 24 accumulators + 2 B vectors + a broadcast;
//! AVX2 and NEON (16/32 registers) use MR = 6 and 8.

pub mod bf16;
mod microkernel;

use microkernel::{dispatch, Args};

use crate::aligned::AlignedVec;
use crate::{Epilogue, Isa};

/// B (`[k, n]`, row-major) packed into column panels for one instruction set's microkernel.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedB {
    isa: Isa,
    k: usize,
    n: usize,
    nr: usize,
    /// The values are bf16 pairs of k (see [`bf16`]), not f32.
    bf16: bool,
    data: AlignedVec,
}

impl PackedB {
    /// Packs row-major `b` (`[k, n]`) for `isa`'s microkernel.
    ///
    /// # Panics
    ///
    /// If `b.len() != k · n`.
    pub fn new(isa: Isa, b: &[f32], k: usize, n: usize) -> PackedB {
        assert_eq!(b.len(), k * n, "B must be k·n = {k}·{n} values");
        PackedB::pack(isa, k, n, |kk, col, dst| {
            dst.copy_from_slice(&b[kk * n + col..][..dst.len()]);
        })
    }

    /// Packs row-major `b` (`[k, n]`) into this buffer, reusing its memory: for a B that changes
    /// with every call (the weight gradient's blocks of dZ), without allocating and zeroing a
    /// new buffer each time. A bf16 packing stays one (rounded as [`PackedB::new_bf16`]).
    ///
    /// # Panics
    ///
    /// If `b.len() != k · n`.
    pub fn repack(&mut self, b: &[f32], k: usize, n: usize) {
        assert_eq!(b.len(), k * n, "B must be k·n = {k}·{n} values");
        if self.bf16 {
            let words = n.div_ceil(self.nr) * k.div_ceil(2) * self.nr;
            self.data.set_len(words);
            // Safety: a bf16 packing exists only where the CPU has AVX512-BF16 (new_bf16,
            // to_bf16); b holds k rows of n, the data the panels of pairs.
            unsafe { bf16::pack_pairs(b.as_ptr(), n, k, n, self.data.as_mut_ptr().cast()) };
            (self.k, self.n) = (k, n);
            return;
        }
        self.fill(k, n, |kk, col, dst| {
            dst.copy_from_slice(&b[kk * n + col..][..dst.len()]);
        });
    }

    /// Packs row-major `b` (`[k, n]`) rounded to bf16 pairs for the bf16 GEMM, as
    /// `PackedB::new(isa, b, k, n).to_bf16()` makes it but in one pass (for a B that changes
    /// every call: training's weights and dZ). `None` where [`PackedB::to_bf16`] gives none.
    ///
    /// # Panics
    ///
    /// If `b.len() != k · n`.
    pub fn new_bf16(isa: Isa, b: &[f32], k: usize, n: usize) -> Option<PackedB> {
        if !bf16::bf16_supported() || panel_width(isa) != bf16::NR {
            return None;
        }
        let mut packed = PackedB {
            isa,
            k: 0,
            n: 0,
            nr: bf16::NR,
            bf16: true,
            data: AlignedVec::new(),
        };
        packed.repack(b, k, n);
        Some(packed)
    }

    /// Packs `B = btᵀ` for `isa`, where `bt` is `[n, k]` row-major (so B is `[k, n]`): the
    /// backward pass multiplies by transposed weights (`dX = dY · Wᵀ`).
    ///
    /// # Panics
    ///
    /// If `bt.len() != k · n`.
    pub fn from_transposed(isa: Isa, bt: &[f32], k: usize, n: usize) -> PackedB {
        assert_eq!(bt.len(), k * n, "Bᵀ must be n·k = {n}·{k} values");
        PackedB::pack(isa, k, n, |kk, col, dst| {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = bt[(col + j) * k + kk];
            }
        })
    }

    /// [`PackedB::from_transposed`] rounded to bf16 pairs, as `from_transposed(..).to_bf16()`
    /// makes it but with one transposing pass and a vectorised packing (training packs its
    /// transposed weights every step). `None` where [`PackedB::new_bf16`] gives none.
    ///
    /// # Panics
    ///
    /// If `bt.len() != k · n`.
    pub fn from_transposed_bf16(isa: Isa, bt: &[f32], k: usize, n: usize) -> Option<PackedB> {
        assert_eq!(bt.len(), k * n, "Bᵀ must be n·k = {n}·{k} values");
        let mut b = vec![0.0f32; k * n];
        for (j, row) in bt.chunks_exact(k.max(1)).enumerate() {
            for (kk, &v) in row.iter().enumerate() {
                b[kk * n + j] = v;
            }
        }
        PackedB::new_bf16(isa, &b, k, n)
    }

    /// Panels of `nr` columns, each `k` rows of `nr` values (zero padded on the right), filled
    /// by `row(kk, first column, destination)` with row `kk` of B from that column on.
    fn pack(isa: Isa, k: usize, n: usize, row: impl Fn(usize, usize, &mut [f32])) -> PackedB {
        let mut packed = PackedB {
            isa,
            k: 0,
            n: 0,
            nr: panel_width(isa),
            bf16: false,
            data: AlignedVec::new(),
        };
        packed.fill(k, n, row);
        packed
    }

    /// [`PackedB::pack`] into this buffer's memory; the padding past `n` is written as zeros.
    fn fill(&mut self, k: usize, n: usize, row: impl Fn(usize, usize, &mut [f32])) {
        let nr = self.nr;
        let panels = n.div_ceil(nr);
        self.data.set_len(panels * k * nr);
        for p in 0..panels {
            let cols = (n - p * nr).min(nr);
            for kk in 0..k {
                let dst = &mut self.data[(p * k + kk) * nr..][..nr];
                row(kk, p * nr, &mut dst[..cols]);
                dst[cols..].fill(0.0);
            }
        }
        (self.k, self.n) = (k, n);
    }

    /// Rows of B (the shared dimension).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Columns of B (and of C).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Columns rounded up to whole panels: the length of each half of
    /// [`gemm_moments`]'s sums.
    pub fn padded_n(&self) -> usize {
        self.n.div_ceil(self.nr) * self.nr
    }
    /// The instruction set this packing is for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether the values are rounded to bf16 ([`PackedB::to_bf16`]).
    pub fn is_bf16(&self) -> bool {
        self.bf16
    }

    /// The value of B at `(kk, col)` as the GEMM multiplies it (rounded, for a bf16 packing).
    #[cfg(test)]
    pub(crate) fn at(&self, kk: usize, col: usize) -> f32 {
        assert!(kk < self.k && col < self.n, "({kk}, {col}) outside B");
        let (p, j) = (col / self.nr, col % self.nr);
        if self.bf16 {
            let bits = self.data[(p * self.k.div_ceil(2) + kk / 2) * self.nr + j].to_bits();
            bf16::bf16_to_f32((bits >> (16 * (kk % 2))) as u16)
        } else {
            self.data[(p * self.k + kk) * self.nr + j]
        }
    }

    /// This f32 packing with every value rounded to bf16 (to nearest, ties to even) and k
    /// taken in pairs, for the bf16 GEMM ([`bf16`]): half the bytes, twice the multiply-adds
    /// per instruction. `None` where that GEMM does not run: a CPU without AVX512-BF16
    /// ([`bf16::bf16_supported`]) or a packing for another instruction set than AVX-512.
    pub fn to_bf16(&self) -> Option<PackedB> {
        if self.bf16 {
            return Some(self.clone());
        }
        if !bf16::bf16_supported() || self.nr != bf16::NR {
            return None;
        }
        let (k, nr, kp) = (self.k, self.nr, self.k.div_ceil(2));
        let panels = self.n.div_ceil(nr);
        let mut data = AlignedVec::zeros(panels * kp * nr);
        for p in 0..panels {
            for kk in 0..k {
                let src = &self.data[(p * k + kk) * nr..][..nr];
                let dst = &mut data[(p * kp + kk / 2) * nr..][..nr];
                for (d, &v) in dst.iter_mut().zip(src) {
                    let half = (bf16::round_bf16(v) as u32) << (16 * (kk % 2));
                    *d = f32::from_bits(d.to_bits() | half);
                }
            }
        }
        Some(PackedB {
            isa: self.isa,
            k,
            n: self.n,
            nr,
            bf16: true,
            data,
        })
    }
}

impl Args {
    /// All of `C = epilogue(A · B)` for `m` rows: every column of B, A as given, no column
    /// sums. The GEMM forms change the fields they differ in.
    fn plain(
        m: usize,
        (a, lda): (*const f32, usize),
        b: &PackedB,
        (c, ldc): (*mut f32, usize),
        epi: &Epilogue,
    ) -> Args {
        Args {
            m,
            k: b.k,
            n: b.n,
            p0: 0,
            a,
            lda,
            a_trans: false,
            b: b.data.as_ptr(),
            c,
            ldc,
            bias: epi.bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
            min: epi.min,
            max: epi.max,
            accumulate: epi.accumulate,
            moments: std::ptr::null_mut(),
            bf16: b.bf16,
        }
    }
}

/// Columns per packed panel: two vectors of the instruction set.
pub fn panel_width(isa: Isa) -> usize {
    2 * isa.f32_lanes()
}

/// `C[m, n] = epilogue(A[m, k] · B[k, n])`, with row strides `lda` and `ldc`.
///
/// Runs on the calling thread; callers split the rows of A and C between threads.
///
/// # Panics
///
/// If a slice is shorter than its shape says, or `lda < k`, `ldc < n`.
pub fn gemm(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) {
    gemm_cols(m, a, lda, b, 0..b.n, c, ldc, epi);
}

/// `C[m, n] = epilogue(A · B)` with A given transposed: `at` is `Aᵀ` (`[k, m]`, row stride
/// `lda ≥ m`). The weight gradient of a 1×1 convolution, `dW = Xᵀ · dZ`, reads the
/// activations `X` (`[pixels, cin]`) in place this way instead of transposing them first.
///
/// # Panics
///
/// If a slice is shorter than its shape says, or `lda < m`, `ldc < n`.
pub fn gemm_transposed_a(
    m: usize,
    at: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= m && ldc >= n, "row strides shorter than rows");
    assert!(
        k == 0 || at.len() >= (k - 1) * lda + m,
        "Aᵀ shorter than k rows"
    );
    assert!(c.len() >= (m - 1) * ldc + n, "C shorter than m rows");
    if let Some(bias) = epi.bias {
        assert!(bias.len() >= n, "bias shorter than n");
    }
    let plain = Args::plain(m, (at.as_ptr(), lda), b, (c.as_mut_ptr(), ldc), epi);
    let args = Args {
        a_trans: true,
        ..plain
    };
    // Safety: the pointers cover the shapes checked above.
    unsafe { dispatch(b.isa, &args) }
}

/// `C[m, n] = A · B` (no bias, no clamp) that also adds each column's sum and sum of squares
/// over the `m` rows to `moments` (`[Σ, Σ²]`, each [`PackedB::padded_n`] long; the padding
/// columns get zeros), summed per tile of rows in f32 and then in f64: batch norm's statistics
/// of a 1×1 convolution's output while it is still in registers, not in another pass over
/// memory.
///
/// # Panics
///
/// If a slice is shorter than its shape says, or `lda < k`, `ldc < n`.
pub fn gemm_moments(
    m: usize,
    (a, lda): (&[f32], usize),
    b: &PackedB,
    (c, ldc): (&mut [f32], usize),
    moments: &mut [f64],
) {
    let (k, n) = (b.k, b.n);
    assert!(
        moments.len() >= 2 * b.padded_n(),
        "moments shorter than 2 · padded n"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && ldc >= n, "row strides shorter than rows");
    assert!(a.len() >= (m - 1) * lda + k, "A shorter than m rows");
    assert!(c.len() >= (m - 1) * ldc + n, "C shorter than m rows");
    let linear = Epilogue::linear();
    let plain = Args::plain(m, (a.as_ptr(), lda), b, (c.as_mut_ptr(), ldc), &linear);
    let args = Args {
        moments: moments.as_mut_ptr(),
        ..plain
    };
    // Safety: the pointers cover the shapes checked above.
    unsafe { dispatch(b.isa, &args) }
}

/// Columns `cols` of `C = epilogue(A · B)`, written to `c` as an `m × cols.len()` matrix with
/// row stride `ldc` (`c[i·ldc + j − cols.start]`). Threads that split a GEMM by columns each
/// call this with their own range and buffer.
///
/// # Panics
///
/// If `cols.start` is not a multiple of [`panel_width`], `cols` reaches past `n`, or a slice
/// is shorter than its shape says.
#[allow(clippy::too_many_arguments)]
pub fn gemm_cols(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    cols: std::ops::Range<usize>,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) {
    let (k, n) = (b.k, b.n);
    assert!(
        cols.start <= cols.end && cols.end <= n,
        "column range past n"
    );
    assert!(
        cols.start.is_multiple_of(b.nr),
        "column range must start on a panel"
    );
    let width = cols.end - cols.start;
    if m == 0 || width == 0 {
        return;
    }
    assert!(lda >= k && ldc >= width, "row strides shorter than rows");
    assert!(a.len() >= (m - 1) * lda + k, "A shorter than m rows");
    assert!(c.len() >= (m - 1) * ldc + width, "C shorter than m rows");
    if let Some(bias) = epi.bias {
        assert!(bias.len() >= n, "bias shorter than n");
    }
    let plain = Args::plain(m, (a.as_ptr(), lda), b, (c.as_mut_ptr(), ldc), epi);
    let args = Args {
        n: cols.end,
        p0: cols.start / b.nr,
        ..plain
    };
    // Safety: the pointers cover the shapes checked above.
    unsafe { dispatch(b.isa, &args) }
}

/// A block of whole columns of C, to be computed by one thread while others compute the other
/// blocks of the same rows. Made by [`column_blocks`], which hands out disjoint blocks.
#[derive(Debug)]
pub struct ColumnBlock<'a> {
    c: *mut f32,
    m: usize,
    ldc: usize,
    cols: std::ops::Range<usize>,
    _c: std::marker::PhantomData<&'a mut [f32]>,
}

// Safety: a block only writes its own columns of its own rows, and column_blocks gives each
// column to exactly one block, so blocks on different threads never touch the same element.
unsafe impl Send for ColumnBlock<'_> {}

/// Splits the `m × n` matrix `c` (row stride `ldc`) into at most `parts` blocks of whole
/// columns, each a multiple of `panel_width(isa)` wide (but the last), for column-parallel GEMMs.
///
/// # Panics
///
/// If `c` is shorter than `m` rows of `n` or `ldc < n`.
pub fn column_blocks(
    c: &mut [f32],
    m: usize,
    n: usize,
    ldc: usize,
    isa: Isa,
    parts: usize,
) -> Vec<ColumnBlock<'_>> {
    assert!(ldc >= n, "row stride shorter than a row");
    assert!(
        m == 0 || c.len() >= (m - 1) * ldc + n,
        "C shorter than m rows"
    );
    let nr = panel_width(isa);
    let per = n.div_ceil(parts.max(1)).div_ceil(nr) * nr;
    let ptr = c.as_mut_ptr();
    (0..n)
        .step_by(per.max(1))
        .map(|start| ColumnBlock {
            // Safety: start < n ≤ row length, inside the slice.
            c: unsafe { ptr.add(start) },
            m,
            ldc,
            cols: start..(start + per).min(n),
            _c: std::marker::PhantomData,
        })
        .collect()
}

impl ColumnBlock<'_> {
    /// The columns of C this block covers.
    pub fn columns(&self) -> std::ops::Range<usize> {
        self.cols.clone()
    }

    /// Computes this block's columns of `C = epilogue(A · B)`.
    ///
    /// # Panics
    ///
    /// If A is shorter than `m` rows, `b` does not have the block's columns, or `b` was packed
    /// for a panel width the block does not start on.
    pub fn gemm(self, a: &[f32], lda: usize, b: &PackedB, epi: &Epilogue) {
        let (k, n) = (b.k, b.n);
        assert!(self.cols.end <= n, "column block past n");
        assert!(
            self.cols.start.is_multiple_of(b.nr),
            "column block must start on a panel"
        );
        if self.m == 0 || self.cols.is_empty() {
            return;
        }
        assert!(
            lda >= k && a.len() >= (self.m - 1) * lda + k,
            "A shorter than m rows"
        );
        if let Some(bias) = epi.bias {
            assert!(bias.len() >= n, "bias shorter than n");
        }
        let plain = Args::plain(self.m, (a.as_ptr(), lda), b, (self.c, self.ldc), epi);
        let args = Args {
            n: self.cols.end,
            p0: self.cols.start / b.nr,
            ..plain
        };
        // Safety: the block's pointer covers its columns of m rows (column_blocks checked the
        // matrix), A and B are checked above, and support of b.isa is checked in dispatch.
        unsafe { dispatch(b.isa, &args) }
    }
}

/// The obviously-correct definition: `C[m, n] = epilogue(A[m, k] · B[k, n])`, B row-major.
pub fn gemm_reference(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    epi: &Epilogue,
) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for kk in 0..k {
                acc += a[i * k + kk] * b[kk * n + j];
            }
            c[i * n + j] = epi.apply_to(j, acc, 0.0);
        }
    }
    c
}

#[cfg(test)]
mod tests;
