//! What one planned step computes (one struct per kind of op) and how it runs on a batch.

use mobilenet_kernels::aligned::AlignedVec;
use mobilenet_kernels::conv::{conv2d, im2col, ConvShape};
use mobilenet_kernels::dwconv::{dwconv3x3, dwconv3x3_ring};
use mobilenet_kernels::gemm::{gemm, PackedB};
use mobilenet_kernels::pool::global_avg_pool;
use mobilenet_kernels::{ConvGeometry, Epilogue, Isa};

use super::pipeline::{run_pipeline, Stage};
use super::PlannedLayer;
use crate::exec::{by_rows, par_gemm, GemmSplit, SpinPool};

/// A full k×k convolution (the stem, the full-conv network, SSD's extra layers), batch norm
/// folded.
#[derive(Debug)]
pub(super) struct Conv {
    pub geometry: ConvGeometry,
    pub shape: ConvShape,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    /// The weights packed as a `[k·k·cin, cout]` GEMM operand, for convolutions with at least
    /// [`IM2COL_MIN_CIN`] input channels: those run as patches times weights.
    pub packed: Option<PackedB>,
}

/// Input channels from which a full convolution runs as im2col + GEMM (the direct kernel is
/// for the stem's 3; SSD300's `extra_0/conv`, 256 channels, ran at 4 GFLOP/s direct).
pub(super) const IM2COL_MIN_CIN: usize = 16;

/// Patch-matrix values per band of an im2col convolution (256 KB: beside the GEMM's panels in
/// L2).
const IM2COL_BAND_VALUES: usize = 64 << 10;

/// A depthwise 3×3 convolution, batch norm folded.
#[derive(Debug)]
pub(super) struct Depthwise {
    pub geometry: ConvGeometry,
    /// Aligned: the kernel loads each tap and bias vector once per group of columns.
    pub weights: AlignedVec,
    pub bias: AlignedVec,
}

/// A GEMM with packed weights and a bias: a pointwise (1×1) convolution with batch norm
/// folded, or the classifier.
#[derive(Debug)]
pub(super) struct Gemm {
    pub weights: PackedB,
    pub bias: Vec<f32>,
}

/// A depthwise layer and the pointwise layer after it, run band by band of output rows so that
/// the depthwise output stays in cache instead of going through memory.
#[derive(Debug)]
pub(super) struct Separable {
    pub depthwise: Depthwise,
    pub pointwise: Gemm,
    /// Output rows per band.
    pub band_rows: usize,
}

/// What one planned step computes.
#[derive(Debug)]
pub(super) enum Op {
    Conv(Conv),
    Depthwise(Depthwise),
    Pointwise(Gemm),
    AvgPool,
    Fc(Gemm),
    Separable(Separable),
    /// Leading layers (the stem and separable pairs) run as a row pipeline: each stage keeps
    /// only the last few rows of its output in a small ring, from which the next stage reads.
    Pipeline(Vec<Stage>),
}

impl Conv {
    /// Output rows `row0 ..` (whole rows, `out`) of the convolution of `img`.
    pub fn rows(
        &self,
        isa: Isa,
        (min, max): (f32, f32),
        img: &[f32],
        out: &mut [f32],
        row0: usize,
    ) {
        let epi = Epilogue::new(Some(&self.bias), min, max);
        if let Some(packed) = &self.packed {
            let g = &self.geometry;
            let ConvShape { k, cin, cout } = self.shape;
            let patch = k * k * cin;
            let band_rows = (IM2COL_BAND_VALUES / (g.out_w * patch)).max(1);
            BAND.with_borrow_mut(|tmp| {
                for (b, band) in out.chunks_mut(band_rows * g.out_w * cout).enumerate() {
                    let pixels = band.len() / cout;
                    if tmp.len() < pixels * patch {
                        tmp.grow(pixels * patch);
                    }
                    let cols = &mut tmp[..pixels * patch];
                    im2col(g, k, cin, img, cols, row0 + b * band_rows);
                    gemm(pixels, cols, patch, packed, band, cout, &epi);
                }
            });
            return;
        }
        conv2d(
            isa,
            &self.geometry,
            self.shape,
            img,
            &self.weights,
            &epi,
            out,
            row0,
        );
    }
}

impl Separable {
    /// Channels of the depthwise output (the pointwise GEMM's depth).
    pub fn channels(&self) -> usize {
        self.pointwise.weights.k()
    }

    /// Output rows `row0 ..` (whole rows, `out`) of the pair: the depthwise rows into `tmp`,
    /// then the 1×1 GEMM from there into `out`. `src` is the whole input image (`ring` 0) or a
    /// ring of `ring` input rows (see [`dwconv3x3_ring`]).
    #[allow(clippy::too_many_arguments)]
    pub fn rows(
        &self,
        isa: Isa,
        (min, max): (f32, f32),
        src: &[f32],
        ring: usize,
        tmp: &mut [f32],
        out: &mut [f32],
        row0: usize,
    ) {
        let (dw, pw) = (&self.depthwise, &self.pointwise);
        let (c, cout) = (pw.weights.k(), pw.weights.n());
        let pixels = out.len() / cout;
        let tmp = &mut tmp[..pixels * c];
        let dw_epi = Epilogue::new(Some(&dw.bias), min, max);
        let g = &dw.geometry;
        if ring == 0 {
            dwconv3x3(isa, g, c, src, &dw.weights, &dw_epi, tmp, row0);
        } else {
            dwconv3x3_ring(isa, g, c, src, ring, &dw.weights, &dw_epi, tmp, row0);
        }
        let pw_epi = Epilogue::new(Some(&pw.bias), min, max);
        gemm(pixels, tmp, c, &pw.weights, out, cout, &pw_epi);
    }
}

thread_local! {
    /// Depthwise output of one band of a fused separable step, per thread.
    static BAND: std::cell::RefCell<AlignedVec> =
        const { std::cell::RefCell::new(AlignedVec::new()) };
    /// The rings and depthwise band of a pipeline, per thread.
    static PIPE: std::cell::RefCell<AlignedVec> =
        const { std::cell::RefCell::new(AlignedVec::new()) };
}

/// Runs `layer` on `batch` images: `src` its input, `dst` its output.
pub(super) fn run_layer(
    isa: Isa,
    layer: &PlannedLayer,
    batch: usize,
    src: &[f32],
    dst: &mut [f32],
    pool: &mut SpinPool,
) {
    let in_len: usize = layer.input.iter().product();
    let [out_h, out_w, cout] = layer.output;
    let rows = (in_len, out_h, out_w * cout);
    let clamp = (layer.min, layer.max);
    match &layer.op {
        Op::Conv(conv) => {
            by_rows(pool, src, dst, rows, &|img, out, row0| {
                conv.rows(isa, clamp, img, out, row0)
            });
        }
        Op::Depthwise(dw) => {
            let epi = Epilogue::new(Some(&dw.bias), layer.min, layer.max);
            by_rows(pool, src, dst, rows, &|img, out, row0| {
                dwconv3x3(isa, &dw.geometry, cout, img, &dw.weights, &epi, out, row0)
            });
        }
        Op::Pointwise(pw) => {
            let epi = Epilogue::new(Some(&pw.bias), layer.min, layer.max);
            let m = batch * out_h * out_w;
            let cin = layer.input[2];
            // Split where it reads least: by rows every part streams all of B, by columns
            // every part reads all of A. Late layers (7×7×1024: A 200 KB, B 4 MB) go by columns.
            let split = if cout >= m {
                GemmSplit::Columns
            } else {
                GemmSplit::Rows
            };
            par_gemm(pool, split, m, (src, cin), &pw.weights, (dst, cout), &epi);
        }
        Op::Separable(sep) => {
            let (c, band_rows) = (sep.channels(), sep.band_rows);
            by_rows(pool, src, dst, rows, &|img, out, row0| {
                BAND.with_borrow_mut(|tmp| {
                    let band_len = band_rows * out_w * cout;
                    for (b, band) in out.chunks_mut(band_len).enumerate() {
                        let pixels = band.len() / cout;
                        if tmp.len() < pixels * c {
                            tmp.grow(pixels * c);
                        }
                        sep.rows(isa, clamp, img, 0, tmp, band, row0 + b * band_rows);
                    }
                });
            });
        }
        Op::Pipeline(stages) => {
            by_rows(pool, src, dst, rows, &|img, out, row0| {
                PIPE.with_borrow_mut(|scratch| {
                    run_pipeline(isa, stages, clamp, img, out, row0, scratch)
                });
            });
        }
        Op::AvgPool => {
            let pixels = layer.input[0] * layer.input[1];
            let c = layer.input[2];
            for (img, out) in src.chunks_exact(in_len).zip(dst.chunks_exact_mut(c)) {
                global_avg_pool(img, pixels, c, out);
            }
        }
        Op::Fc(fc) => {
            let epi = Epilogue::new(Some(&fc.bias), layer.min, layer.max);
            // At batch 1 there is one row: split the classes between threads (the layer is a
            // stream of its 4 MB of weights).
            let (cin, columns) = (layer.input[2], GemmSplit::Columns);
            par_gemm(
                pool,
                columns,
                batch,
                (src, cin),
                &fc.weights,
                (dst, cout),
                &epi,
            );
        }
    }
}
