//! Work partitioning and the safe parallel helpers built on [`SpinPool::run`].
//!
//! A partition is a list of ranges of *units* (rows, images, pixels), one per part; a buffer
//! of `unit` values per unit is cut into the matching disjoint chunks and part `t` gets chunk
//! `t` on thread `t`. The one `unsafe` construction that hands out those chunks ([`Parts`]) and
//! the raw output pointer of the column-split int8 GEMM are private to this file.

use std::ops::Range;
use std::sync::Mutex;

use mobilenet_kernels::gemm::{column_blocks, gemm, gemm_moments, PackedB};
use mobilenet_kernels::int8::gemm::{qgemm, qgemm_ptr, PackedQB};
use mobilenet_kernels::int8::{IntIsa, IntIsaKind, Requant};
use mobilenet_kernels::Epilogue;

use super::pool::SpinPool;

/// `n` items split into `parts` contiguous ranges of nearly equal length, each a multiple of
/// `align` (but the last).
pub fn split(n: usize, parts: usize, align: usize) -> Vec<Range<usize>> {
    let per = n.div_ceil(parts.max(1)).div_ceil(align.max(1)) * align.max(1);
    (0..parts)
        .map(|i| (i * per).min(n)..((i + 1) * per).min(n))
        .collect()
}

/// `data` cut into disjoint mutable chunks `ranges[t]·unit`, one per part of a
/// [`SpinPool::run`].
struct Parts<'a, 'r, T> {
    ptr: *mut T,
    ranges: &'r [Range<usize>],
    unit: usize,
    _data: std::marker::PhantomData<&'a mut [T]>,
}

// Safety: the chunks are disjoint (checked in `new`), and `take` hands chunk `t` to the one
// part numbered `t`; SpinPool::run calls each part exactly once.
unsafe impl<T: Send> Sync for Parts<'_, '_, T> {}

impl<'a, 'r, T> Parts<'a, 'r, T> {
    /// # Panics
    ///
    /// If the ranges are not increasing, disjoint and inside `data`.
    fn new(data: &'a mut [T], ranges: &'r [Range<usize>], unit: usize) -> Parts<'a, 'r, T> {
        let mut end = 0;
        for r in ranges {
            assert!(
                r.start >= end && r.start <= r.end && r.end * unit <= data.len(),
                "overlapping parts or a part past the buffer"
            );
            end = r.end;
        }
        Parts {
            ptr: data.as_mut_ptr(),
            ranges,
            unit,
            _data: std::marker::PhantomData,
        }
    }

    /// The first unit and the chunk of part `t` (empty past the last range).
    ///
    /// # Safety
    ///
    /// Only part `t` of the one [`SpinPool::run`] this is used in may call it with `t`.
    #[allow(clippy::mut_from_ref)] // disjointness is what makes the &mut sound
    unsafe fn take(&self, t: usize) -> (usize, &mut [T]) {
        match self.ranges.get(t) {
            // Safety: the chunk is inside `data` and disjoint from every other part's.
            Some(r) => (r.start, unsafe {
                std::slice::from_raw_parts_mut(
                    self.ptr.add(r.start * self.unit),
                    r.len() * self.unit,
                )
            }),
            None => (0, &mut []),
        }
    }
}

/// Calls `f(part, first unit, chunk)` for every part's chunk `data[ranges[t]·unit]`, each on
/// its own thread of `pool`; parts past `ranges` do nothing.
///
/// # Panics
///
/// If the ranges overlap or reach past `data`, or `f` panics.
pub fn for_each_part<T: Send>(
    pool: &mut SpinPool,
    data: &mut [T],
    ranges: &[Range<usize>],
    unit: usize,
    f: impl Fn(usize, usize, &mut [T]) + Sync,
) {
    let parts = Parts::new(data, ranges, unit);
    pool.run(&|t| {
        // Safety: part t takes chunk t only.
        let (first, chunk) = unsafe { parts.take(t) };
        if t < ranges.len() {
            f(t, first, chunk);
        }
    });
}

/// [`for_each_part`] over two buffers cut by the same ranges (`unit_a` and `unit_b` values per
/// unit): `f(part, first unit, chunk of a, chunk of b)`.
///
/// # Panics
///
/// As [`for_each_part`].
pub fn for_each_part2<A: Send, B: Send>(
    pool: &mut SpinPool,
    (a, unit_a): (&mut [A], usize),
    (b, unit_b): (&mut [B], usize),
    ranges: &[Range<usize>],
    f: impl Fn(usize, usize, &mut [A], &mut [B]) + Sync,
) {
    let (pa, pb) = (Parts::new(a, ranges, unit_a), Parts::new(b, ranges, unit_b));
    pool.run(&|t| {
        // Safety: part t takes chunk t of each buffer only.
        let ((first, ca), (_, cb)) = unsafe { (pa.take(t), pb.take(t)) };
        if t < ranges.len() {
            f(t, first, ca, cb);
        }
    });
}

/// [`for_each_part`] collecting what each part returns, in part order (`R::default()` for
/// parts past `ranges`).
pub fn map_parts<T: Send, R: Send + Default>(
    pool: &mut SpinPool,
    data: &mut [T],
    ranges: &[Range<usize>],
    unit: usize,
    f: impl Fn(usize, usize, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let slots: Vec<Mutex<R>> = ranges.iter().map(|_| Mutex::default()).collect();
    for_each_part(pool, data, ranges, unit, |t, first, chunk| {
        let value = f(t, first, chunk);
        if let Ok(mut slot) = slots[t].lock() {
            *slot = value;
        }
    });
    slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect()
}

/// Runs `f(part, range)` for each part's range on that part's thread and collects the results
/// in part order.
pub fn map_ranges<R: Send + Default>(
    pool: &mut SpinPool,
    ranges: &[Range<usize>],
    f: impl Fn(usize, &Range<usize>) -> R + Sync,
) -> Vec<R> {
    map_parts(pool, &mut [(); 0], ranges, 0, |t, _, _| f(t, &ranges[t]))
}

/// Computes output rows `first ..` of one image into the slice given: `f(image, rows, first)`.
pub type RowsFn<'a> = dyn Fn(&[f32], &mut [f32], usize) + Sync + 'a;

/// Splits the output rows of all images (`batch · out_h` rows of `row_len` values in `dst`)
/// into one contiguous range per thread and calls `f(image, rows, first row)` for each image's
/// share of a range (`src` holds the images, `in_len` values each).
pub fn by_rows(
    pool: &mut SpinPool,
    src: &[f32],
    dst: &mut [f32],
    (in_len, out_h, row_len): (usize, usize, usize),
    f: &RowsFn,
) {
    let ranges = split(dst.len() / row_len, pool.threads(), 1);
    for_each_part(pool, dst, &ranges, row_len, |_, mut row, mut out| {
        while !out.is_empty() {
            let (image, row0) = (row / out_h, row % out_h);
            let n = (out_h - row0).min(out.len() / row_len);
            let (mine, rest) = std::mem::take(&mut out).split_at_mut(n * row_len);
            f(&src[image * in_len..(image + 1) * in_len], mine, row0);
            out = rest;
            row += n;
        }
    });
}

/// How a GEMM is split between threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmSplit {
    /// Bands of rows: every part streams all of B (many rows).
    Rows,
    /// Blocks of whole columns, written in place: every part reads all of A and only its
    /// share of B (few rows and many columns: late 1×1 layers, the classifier).
    Columns,
}

/// `C[m, n] = epilogue(A · B)` on the pool's threads, split as `split` says; A and C are
/// given with their row strides.
pub fn par_gemm(
    pool: &mut SpinPool,
    split: GemmSplit,
    m: usize,
    (a, lda): (&[f32], usize),
    b: &PackedB,
    (c, ldc): (&mut [f32], usize),
    epi: &Epilogue,
) {
    match split {
        GemmSplit::Rows => {
            let ranges = self::split(m, pool.threads(), 1);
            for_each_part(pool, &mut c[..m * ldc], &ranges, ldc, |_, row, chunk| {
                gemm(chunk.len() / ldc, &a[row * lda..], lda, b, chunk, ldc, epi);
            });
        }
        GemmSplit::Columns if pool.threads() == 1 => gemm(m, a, lda, b, c, ldc, epi),
        GemmSplit::Columns => {
            let blocks: Vec<Mutex<Option<_>>> =
                column_blocks(c, m, b.n(), ldc, b.isa(), pool.threads())
                    .into_iter()
                    .map(|block| Mutex::new(Some(block)))
                    .collect();
            pool.run(&|t| {
                let block = blocks.get(t).and_then(|b| b.lock().ok()?.take());
                if let Some(block) = block {
                    block.gemm(a, lda, b, epi);
                }
            });
        }
    }
}

/// `C[m, n] = A · B` by bands of rows, returning each column's `(Σ, Σ²)` over the `m` rows in
/// f64: every part sums its tiles as [`gemm_moments`] stores them, and the parts are added in
/// part order.
pub fn par_gemm_moments(
    pool: &mut SpinPool,
    m: usize,
    (a, lda): (&[f32], usize),
    b: &PackedB,
    (c, ldc): (&mut [f32], usize),
) -> (Vec<f64>, Vec<f64>) {
    let ranges = self::split(m, pool.threads(), 1);
    let padded = b.padded_n();
    let parts = map_parts(pool, &mut c[..m * ldc], &ranges, ldc, |_, row, chunk| {
        let mut moments = vec![0.0f64; 2 * padded];
        let rows = chunk.len() / ldc;
        gemm_moments(rows, (&a[row * lda..], lda), b, (chunk, ldc), &mut moments);
        moments
    });
    let n = b.n();
    let (mut sum, mut sq) = (vec![0.0f64; n], vec![0.0f64; n]);
    for part in parts.iter().filter(|p| !p.is_empty()) {
        for j in 0..n {
            sum[j] += part[j];
            sq[j] += part[padded + j];
        }
    }
    (sum, sq)
}

/// The int8 GEMM `C[m, n] = requant(A · B)` on the pool's threads: by bands of rows when there
/// are many, by column panels otherwise (the 7×7 layers, the classifier at batch 1).
#[allow(clippy::too_many_arguments)]
pub fn qgemm_split(
    pool: &mut SpinPool,
    isa: IntIsa,
    m: usize,
    a: &[u8],
    b: &PackedQB,
    row_coeff: i32,
    rq: &Requant,
    c: &mut [u8],
) {
    let (k, n) = (b.k(), b.n());
    let threads = pool.threads();
    let c = &mut c[..m * n];
    if threads == 1 {
        qgemm(isa, m, a, k, b, row_coeff, rq, c, n, 0..b.panels());
        return;
    }
    // Rows per kernel block: AMX takes 32 at a time, the VNNI tile 12.
    // Row bands when there are enough rows and A is the larger operand; else column panels,
    // so that each thread reads only its share of the weights (the 14×14 and 7×7 layers).
    let block = if isa.kind() == IntIsaKind::Amx {
        32
    } else {
        12
    };
    if m >= block * threads * 2 && (m >= n || b.panels() < threads) {
        let ranges = split(m, threads, block);
        for_each_part(pool, c, &ranges, n, |_, row0, out| {
            let rows = out.len() / n;
            if rows > 0 {
                let a = &a[row0 * k..];
                qgemm(isa, rows, a, k, b, row_coeff, rq, out, n, 0..b.panels());
            }
        });
    } else {
        // Column panels per thread write interleaved parts of every row: share C by pointer.
        let panels = split(b.panels(), threads, 1);
        let ptr = SharedOut(c.as_mut_ptr());
        pool.run(&|t| {
            let Some(range) = panels.get(t) else { return };
            // Safety: C holds m rows of n bytes, borrowed mutably for this call; each thread
            // writes only the columns of its own panels, so the writes are disjoint.
            unsafe { qgemm_ptr(isa, m, a, k, b, row_coeff, rq, ptr.get(), n, range.clone()) };
        });
    }
}

/// C shared between threads writing disjoint columns.
struct SharedOut(*mut u8);
// Safety: see qgemm_split: each thread touches its own columns only.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn get(&self) -> *mut u8 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_write_disjoint_ranges() {
        let mut pool = SpinPool::new(2);
        let mut data = vec![0.0f32; 10];
        for_each_part(
            &mut pool,
            &mut data,
            &split(5, 2, 1),
            2,
            |_, first, chunk| {
                for (j, v) in chunk.iter_mut().enumerate() {
                    *v = (2 * first + j) as f32;
                }
            },
        );
        assert_eq!(data, (0..10).map(|v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    #[should_panic(expected = "overlapping parts")]
    fn overlapping_ranges_are_refused() {
        let mut pool = SpinPool::new(2);
        let mut data = vec![0u8; 10];
        for_each_part(&mut pool, &mut data, &[0..6, 5..10], 1, |_, _, _| {});
    }

    #[test]
    fn map_parts_returns_in_part_order() {
        let mut pool = SpinPool::new(3);
        let ranges = split(10, 3, 1);
        let sums = map_ranges(&mut pool, &ranges, |_, r| r.clone().sum::<usize>());
        assert_eq!(sums, [6, 22, 17]);
    }

    #[test]
    fn by_rows_covers_every_row_of_every_image_once() {
        let (batch, out_h, row_len) = (3, 5, 2);
        let src: Vec<f32> = (0..batch).map(|i| i as f32).collect();
        for threads in [1, 2, 4] {
            let mut pool = SpinPool::new(threads);
            let mut dst = vec![0.0; batch * out_h * row_len];
            by_rows(
                &mut pool,
                &src,
                &mut dst,
                (1, out_h, row_len),
                &|img, out, row0| {
                    for (r, row) in out.chunks_exact_mut(row_len).enumerate() {
                        row.fill(img[0] * 100.0 + (row0 + r) as f32);
                    }
                },
            );
            let want: Vec<f32> = (0..batch * out_h)
                .flat_map(|r| [((r / out_h) * 100 + r % out_h) as f32; 2])
                .collect();
            assert_eq!(dst, want, "{threads} threads");
        }
    }

    #[test]
    fn split_is_even_and_aligned() {
        assert_eq!(split(10, 3, 1), [0..4, 4..8, 8..10]);
        assert_eq!(split(49, 2, 12), [0..36, 36..49]);
        assert_eq!(split(3, 4, 1), [0..1, 1..2, 2..3, 3..3]);
    }
}
