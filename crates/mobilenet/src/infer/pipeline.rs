//! The row pipeline: the stem and the separable pairs after it computed row by row, each stage
//! keeping only its last rows in a small per-thread ring from which the next stage reads, so
//! that the large early activations never leave the cache.

use mobilenet_kernels::aligned::AlignedVec;
use mobilenet_kernels::{ConvGeometry, Isa};

use super::op::Op;
use super::PlannedLayer;
use crate::layers::KERNEL;

/// Most stages in one pipeline (MobileNet v1 has the stem and 13 separable blocks): the
/// per-call state of a pipeline lives in arrays of this size instead of allocations.
pub(super) const MAX_STAGES: usize = 14;

/// One step of an [`Op::Pipeline`].
#[derive(Debug)]
pub(super) struct Stage {
    /// The step run on its own: `Op::Conv` (first stage only: it reads the whole image) or
    /// `Op::Separable`. Sessions whose threads would share an image's rows run the stages
    /// one after the other like this (see [`super::Session`]).
    pub layer: PlannedLayer,
    /// Geometry of the stage's 3×3 convolution (rows of input each output row needs).
    pub geometry: ConvGeometry,
    /// Output rows computed per call.
    pub chunk: usize,
    /// Rows of the output ring the next stage reads from (0 for the last stage, which writes
    /// the pipeline's output).
    pub ring: usize,
}

impl Stage {
    /// Channels of the depthwise output a separable stage keeps per row (0 for the stem).
    fn depthwise_channels(&self) -> usize {
        match &self.layer.op {
            Op::Separable(sep) => sep.channels(),
            _ => 0,
        }
    }
}

/// Rows `row0 ..` of a pipeline's output for one image (`out`: whole rows of the last stage).
///
/// Works backwards from the output rows to the first row each stage needs, then pulls: a stage
/// computing a chunk of rows first makes the stage before it compute every input row the chunk
/// reads. Each row of each stage is computed once (threads working on neighbouring bands
/// recompute the few rows at their border).
pub(super) fn run_pipeline(
    isa: Isa,
    stages: &[Stage],
    clamp: (f32, f32),
    img: &[f32],
    out: &mut [f32],
    row0: usize,
    scratch: &mut AlignedVec,
) {
    let n = stages.len();
    let row_len = |s: &Stage| s.layer.output[1] * s.layer.output[2];
    let band_len = stages
        .iter()
        .map(|s| s.chunk * s.layer.output[1] * s.depthwise_channels())
        .max()
        .unwrap_or(0);
    let ring_total: usize = stages.iter().map(|s| s.ring * row_len(s)).sum();
    scratch.grow(ring_total + band_len);
    let (mut rest, band) = scratch.split_at_mut(ring_total);
    let mut rings: [&mut [f32]; MAX_STAGES] = Default::default();
    for (s, ring) in stages.iter().zip(&mut rings) {
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(s.ring * row_len(s));
        *ring = mine;
        rest = tail;
    }
    // First row each stage computes: the top of the window of the first row after it.
    let mut next = [0; MAX_STAGES];
    next[n - 1] = row0;
    for s in (1..n).rev() {
        let g = &stages[s].geometry;
        next[s - 1] = (next[s] * g.stride).saturating_sub(g.pad_top);
    }
    let mut p = Pipe {
        isa,
        stages,
        clamp,
        img,
        rings,
        band,
        next,
        out,
        row0,
    };
    let end = row0 + p.out.len() / row_len(&stages[n - 1]);
    p.produce(n - 1, end);
}

/// The state of one [`run_pipeline`] call.
struct Pipe<'a, 'b> {
    isa: Isa,
    stages: &'a [Stage],
    clamp: (f32, f32),
    img: &'a [f32],
    rings: [&'b mut [f32]; MAX_STAGES],
    band: &'b mut [f32],
    /// Next row each stage computes.
    next: [usize; MAX_STAGES],
    out: &'b mut [f32],
    row0: usize,
}

impl Pipe<'_, '_> {
    /// Computes stage `s`'s rows until `end` (exclusive), chunk by chunk.
    fn produce(&mut self, s: usize, end: usize) {
        let stage = &self.stages[s];
        let [out_h, out_w, cout] = stage.layer.output;
        let row_len = out_w * cout;
        let last = s + 1 == self.stages.len();
        while self.next[s] < end {
            let r0 = self.next[s];
            let mut r1 = (r0 + stage.chunk).min(out_h);
            if last {
                r1 = r1.min(end);
            } else {
                // Stop at the end of the ring: a chunk's rows are contiguous.
                r1 = r1.min(r0 - r0 % stage.ring + stage.ring);
            }
            let g = &stage.geometry;
            if s > 0 {
                // The last input row the chunk's bottom window reaches.
                let bottom = ((r1 - 1) * g.stride + KERNEL).saturating_sub(g.pad_top);
                self.produce(s - 1, bottom.min(g.in_h));
                let prev = &self.stages[s - 1];
                let top = (r0 * g.stride).saturating_sub(g.pad_top);
                debug_assert!(
                    top + prev.ring >= self.next[s - 1],
                    "stage {s}: input row {top} has left the ring"
                );
            }
            let (before, after) = self.rings.split_at_mut(s);
            let dst: &mut [f32] = if last {
                &mut self.out[(r0 - self.row0) * row_len..(r1 - self.row0) * row_len]
            } else {
                let slot = r0 % stage.ring;
                &mut after[0][slot * row_len..(slot + r1 - r0) * row_len]
            };
            let (src, ring) = match before.last() {
                Some(prev) => (&**prev, self.stages[s - 1].ring),
                None => (self.img, 0),
            };
            match &stage.layer.op {
                Op::Conv(conv) => {
                    debug_assert!(s == 0, "a conv stage reads the whole image");
                    conv.rows(self.isa, self.clamp, src, dst, r0);
                }
                Op::Separable(sep) => {
                    sep.rows(self.isa, self.clamp, src, ring, self.band, dst, r0);
                }
                _ => unreachable!("fuse_pipeline takes conv and separable steps only"),
            }
            self.next[s] = r1;
        }
    }
}
