//! The convolutions of the network (the stem, depthwise and pointwise layers) without bias
//! (batch norm follows): forward over a batch and backward to the weight gradient and, where
//! asked, the input gradient, threaded by the execution layer. Their single-threaded references
//! are the kernels crate's `*_reference` functions, checked there; the network's gradient check
//! covers them chained.

use mobilenet_kernels::backward::{
    conv2d_backward_weights, dwconv3x3_backward_input, dwconv3x3_backward_weights,
};
use mobilenet_kernels::conv::{col2im, conv2d, im2col, ConvShape};
use mobilenet_kernels::dwconv::dwconv3x3;
use std::ops::Range;

use mobilenet_kernels::gemm::{gemm, gemm_transposed_a, PackedB};
use mobilenet_kernels::{ConvGeometry, Epilogue, Isa};

use super::bn::{add_moments, channel_moments, combine, Moments};
use crate::config::Padding;
use crate::exec::{map_parts, map_ranges, par_gemm, par_gemm_moments, split};
use crate::exec::{GemmSplit, SpinPool};
use crate::layers::{Layer, LayerKind};

/// One convolution layer of the network as the trainer runs it.
#[derive(Clone, Debug)]
pub(crate) struct ConvLayer {
    kind: LayerKind,
    geometry: ConvGeometry,
    shape: ConvShape,
    /// Values per image of the input and the output.
    in_len: usize,
    out_len: usize,
    /// Output pixels per image.
    pixels: usize,
    /// The pointwise GEMMs (forward, weight and input gradients) in bf16.
    bf16: bool,
}

/// Rows of the pointwise weight gradient per block: Xᵀ and dZ of a block stay small.
const WGRAD_BLOCK_ROWS: usize = 2048;

/// Values of dZ per block of [`ConvLayer::backward_pointwise`]: a block stays in L2 between
/// its making, its packing and the two GEMMs that read it.
const FUSED_BLOCK_VALUES: usize = 32 << 10;

/// Makes rows `first ..` of dZ (as many as the slice holds).
pub(crate) type DzFn<'a> = dyn Fn(usize, &mut [f32]) + Sync + 'a;

/// Batch norm's backward sums of the layer below over rows `first ..` of its dA (this layer's
/// dX), taken while the block just written is in cache.
pub(crate) type SumsFn<'a> = dyn Fn(usize, &[f32]) -> Moments + Sync + 'a;

/// What one thread's share of a backward pass gives: its part of dW and of the sums.
type Part = (Vec<f32>, Option<Moments>);

impl ConvLayer {
    /// `layer` (a `Conv`, `Depthwise` or `Pointwise` layer of the table) under `padding`.
    pub fn new(layer: &Layer, padding: Padding) -> ConvLayer {
        ConvLayer {
            kind: layer.kind,
            geometry: layer.geometry(padding),
            shape: ConvShape {
                k: layer.kernel,
                cin: layer.input[2],
                cout: layer.output[2],
            },
            in_len: layer.input.iter().product(),
            out_len: layer.output.iter().product(),
            pixels: layer.output[0] * layer.output[1],
            bf16: false,
        }
    }

    /// Runs the pointwise GEMMs in bf16 (operands rounded, products summed in f32) or f32.
    /// The caller checks that the CPU has AVX512-BF16.
    pub fn set_bf16(&mut self, on: bool) {
        self.bf16 = on;
    }

    /// Row-major `b` (`[k, n]`) packed for this layer's GEMMs: rounded to bf16 pairs when
    /// the layer runs in bf16.
    fn pack(&self, isa: Isa, b: &[f32], k: usize, n: usize) -> PackedB {
        if !self.bf16 {
            return PackedB::new(isa, b, k, n);
        }
        PackedB::new_bf16(isa, b, k, n)
            .expect("bf16 training needs AVX512-BF16 and the AVX-512 instruction set")
    }

    /// `B = btᵀ` (`bt` is `[n, k]`) packed as [`ConvLayer::pack`] packs.
    fn pack_transposed(&self, isa: Isa, bt: &[f32], k: usize, n: usize) -> PackedB {
        if !self.bf16 {
            return PackedB::from_transposed(isa, bt, k, n);
        }
        PackedB::from_transposed_bf16(isa, bt, k, n)
            .expect("bf16 training needs AVX512-BF16 and the AVX-512 instruction set")
    }

    /// Whether this is a full convolution run through im2col and the GEMM: all but the
    /// stem's 3-channel input, which runs direct (and needs no input gradient).
    fn im2col(&self) -> bool {
        self.kind == LayerKind::Conv && self.shape.cin > 3
    }

    /// Values per patch: `k·k·cin`.
    fn patch(&self) -> usize {
        self.shape.k * self.shape.k * self.shape.cin
    }

    /// `z = conv(x, w)` for a batch of `batch` images, and with `moments` each output
    /// channel's `(Σz, Σz²)`, taken while the output is still in cache (the GEMM's tiles, each
    /// image's output) rather than by batch norm in another pass over memory.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        pool: &mut SpinPool,
        isa: Isa,
        w: &[f32],
        x: &[f32],
        z: &mut [f32],
        batch: usize,
        moments: bool,
    ) -> Option<Moments> {
        let (g, shape, in_len) = (&self.geometry, self.shape, self.in_len);
        let linear = Epilogue::linear();
        let (cin, cout) = (shape.cin, shape.cout);
        if self.kind == LayerKind::Pointwise {
            let packed = self.pack(isa, w, cin, cout);
            let m = batch * self.pixels;
            if moments {
                return Some(par_gemm_moments(pool, m, (x, cin), &packed, (z, cout)));
            }
            par_gemm(
                pool,
                GemmSplit::Rows,
                m,
                (x, cin),
                &packed,
                (z, cout),
                &linear,
            );
            return None;
        }
        let ranges = split(batch, pool.threads(), 1);
        let out_len = self.out_len;
        let parts = map_parts(
            pool,
            &mut z[..batch * out_len],
            &ranges,
            out_len,
            |_, i0, zs| {
                let mut sums = None;
                let packed = self
                    .im2col()
                    .then(|| PackedB::new(isa, w, self.patch(), cout));
                let mut cols = vec![
                    0.0f32;
                    if packed.is_some() {
                        self.pixels * self.patch()
                    } else {
                        0
                    }
                ];
                for (i, out) in (i0..).zip(zs.chunks_exact_mut(out_len)) {
                    let img = &x[i * in_len..(i + 1) * in_len];
                    if let Some(packed) = &packed {
                        im2col(g, shape.k, cin, img, &mut cols, 0);
                        gemm(self.pixels, &cols, self.patch(), packed, out, cout, &linear);
                    } else if self.kind == LayerKind::Conv {
                        conv2d(isa, g, shape, img, w, &linear, out, 0);
                    } else {
                        dwconv3x3(isa, g, cin, img, w, &linear, out, 0);
                    }
                    if moments {
                        add_moments(&mut sums, channel_moments(isa, out, cout));
                    }
                }
                sums.unwrap_or_default()
            },
        );
        moments.then(|| combine(parts))
    }

    /// Gradients of the convolution with dZ made a block of rows at a time by `dz_of` (batch
    /// norm's last backward pass): `dw` (overwritten) and, if asked, `dx` with the sums
    /// `sums_of` takes of each block of it (returned). Each thread makes a block (pointwise: a
    /// few hundred rows; depthwise and the stem: one image) into a buffer that stays in cache
    /// and uses it at once for both gradients, so dZ is never written out and read back.
    ///
    /// # Panics
    ///
    /// If `dx` is asked of the stem (a full convolution has no input-gradient kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        pool: &mut SpinPool,
        isa: Isa,
        w: &[f32],
        x: &[f32],
        dz_of: &DzFn,
        dw: &mut [f32],
        dx: Option<(&mut [f32], &SumsFn)>,
        batch: usize,
    ) -> Option<Moments> {
        let threads = pool.threads();
        let parts = if self.kind == LayerKind::Pointwise {
            let (cin, m) = (self.shape.cin, batch * self.pixels);
            let wt = dx
                .is_some()
                .then(|| self.pack_transposed(isa, w, self.shape.cout, cin));
            let ranges = split(m, threads, 1);
            let wt = wt.as_ref();
            match dx {
                Some((dx, sums_of)) => {
                    map_parts(pool, &mut dx[..m * cin], &ranges, cin, |_, row, chunk| {
                        let rows = row..row + chunk.len() / cin;
                        self.pointwise_part(isa, x, dz_of, wt, rows, Some((chunk, sums_of)))
                    })
                }
                None => map_ranges(pool, &ranges, |_, rows| {
                    self.pointwise_part(isa, x, dz_of, wt, rows.clone(), None)
                }),
            }
        } else {
            assert!(
                dx.is_none() || self.kind == LayerKind::Depthwise || self.im2col(),
                "the input gradient of a full conv with few input channels is not implemented"
            );
            let in_len = self.in_len;
            let ranges = split(batch, threads, 1);
            match dx {
                Some((dx, sums_of)) => map_parts(
                    pool,
                    &mut dx[..batch * in_len],
                    &ranges,
                    in_len,
                    |_, i, c| {
                        let images = i..i + c.len() / in_len;
                        self.image_part(isa, (w, x), dz_of, images, Some((c, sums_of)))
                    },
                ),
                None => map_ranges(pool, &ranges, |_, images| {
                    self.image_part(isa, (w, x), dz_of, images.clone(), None)
                }),
            }
        };
        dw.fill(0.0);
        let mut sums = None;
        for (part, part_sums) in parts {
            for (d, p) in dw.iter_mut().zip(&part) {
                *d += p;
            }
            if let Some(m) = part_sums {
                add_moments(&mut sums, m);
            }
        }
        sums
    }

    /// One thread's share of a pointwise backward pass: rows `rows` a block at a time; returns
    /// its part of dW and writes its rows of dX (`Wᵀ` packed) to `dx`.
    fn pointwise_part(
        &self,
        isa: Isa,
        x: &[f32],
        dz_of: &DzFn,
        wt: Option<&PackedB>,
        rows: Range<usize>,
        mut dx: Option<(&mut [f32], &SumsFn)>,
    ) -> Part {
        let (cin, cout) = (self.shape.cin, self.shape.cout);
        // At least cin rows a block: the weight gradient adds its cin × cout block to the
        // accumulator once per block.
        let block = (FUSED_BLOCK_VALUES / cout)
            .max(cin)
            .clamp(64, WGRAD_BLOCK_ROWS);
        let (mut acc, mut sums) = (vec![0.0f32; cin * cout], None);
        let mut dz = vec![0.0f32; block.min(rows.len()) * cout];
        let mut b = self.pack(isa, &[], 0, cout);
        let mut r = rows.start;
        while r < rows.end {
            let n = (rows.end - r).min(block);
            let dz = &mut dz[..n * cout];
            dz_of(r, dz);
            b.repack(dz, n, cout);
            let xb = &x[r * cin..(r + n) * cin];
            gemm_transposed_a(cin, xb, cin, &b, &mut acc, cout, &Epilogue::accumulating());
            if let (Some((dx, sums_of)), Some(wt)) = (dx.as_mut(), wt) {
                let out = &mut dx[(r - rows.start) * cin..][..n * cin];
                gemm(n, dz, cout, wt, out, cin, &Epilogue::linear());
                add_moments(&mut sums, sums_of(r, out));
            }
            r += n;
        }
        (acc, sums)
    }

    /// One thread's share of a depthwise or stem backward pass: images `images`, one at a
    /// time; returns its part of dW and writes its images' dX to `dx`.
    fn image_part(
        &self,
        isa: Isa,
        (w, x): (&[f32], &[f32]),
        dz_of: &DzFn,
        images: Range<usize>,
        mut dx: Option<(&mut [f32], &SumsFn)>,
    ) -> Part {
        let (g, shape, in_len) = (&self.geometry, self.shape, self.in_len);
        let (mut acc, mut sums) = (vec![0.0f32; w.len()], None);
        let mut dz = vec![0.0f32; self.out_len];
        if self.im2col() {
            // dW += colsᵀ·dZ and dX = col2im(dZ·Wᵀ), image by image.
            let (patch, cout) = (self.patch(), shape.cout);
            let wt = dx
                .is_some()
                .then(|| PackedB::from_transposed(isa, w, cout, patch));
            let mut cols = vec![0.0f32; self.pixels * patch];
            let mut b = PackedB::new(isa, &[], 0, cout);
            for i in images.clone() {
                dz_of(i * self.pixels, &mut dz);
                let img = &x[i * in_len..(i + 1) * in_len];
                im2col(g, shape.k, shape.cin, img, &mut cols, 0);
                b.repack(&dz, self.pixels, cout);
                gemm_transposed_a(
                    patch,
                    &cols,
                    patch,
                    &b,
                    &mut acc,
                    cout,
                    &Epilogue::accumulating(),
                );
                if let (Some((dx, sums_of)), Some(wt)) = (dx.as_mut(), wt.as_ref()) {
                    gemm(
                        self.pixels,
                        &dz,
                        cout,
                        wt,
                        &mut cols,
                        patch,
                        &Epilogue::linear(),
                    );
                    let out = &mut dx[(i - images.start) * in_len..][..in_len];
                    out.fill(0.0);
                    col2im(g, shape.k, shape.cin, &cols, out, 0);
                    add_moments(&mut sums, sums_of(i * (in_len / shape.cin), out));
                }
            }
            return (acc, sums);
        }
        for i in images.clone() {
            dz_of(i * self.pixels, &mut dz);
            let img = &x[i * in_len..(i + 1) * in_len];
            if self.kind == LayerKind::Conv {
                conv2d_backward_weights(isa, g, shape, img, &dz, &mut acc);
            } else {
                dwconv3x3_backward_weights(isa, g, shape.cin, img, &dz, &mut acc);
            }
            if let Some((dx, sums_of)) = dx.as_mut() {
                let out = &mut dx[(i - images.start) * in_len..][..in_len];
                dwconv3x3_backward_input(isa, g, shape.cin, &dz, w, out);
                add_moments(&mut sums, sums_of(i * (in_len / shape.cin), out));
            }
        }
        (acc, sums)
    }
}
