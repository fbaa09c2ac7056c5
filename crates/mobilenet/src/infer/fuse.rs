//! Fusion passes over the plan: depthwise + pointwise pairs run band by band, and the stem
//! with the pairs after it run as one row pipeline.

use super::op::{Op, Separable};
use super::pipeline::{Stage, MAX_STAGES};
use super::PlannedLayer;
use crate::layers::{LayerKind, KERNEL};

/// Which layers the plan fuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fusion {
    /// Every layer runs on its own and writes its whole output.
    None,
    /// Depthwise + pointwise pairs whose pointwise weights fit in L2 run band by band.
    Separable,
    /// As `Separable`, and the stem and the fused pairs after it run as one row pipeline, so
    /// that their large activations never leave the cache (the default).
    Pipeline,
}

/// Largest pointwise weight matrix (bytes) fused with its depthwise layer: it must stay in
/// L2 while the bands stream past it (blocks 1–5 at α = 1; later blocks have activations
/// small enough to stay in cache without fusion, and weights too big to re-read per band).
const FUSE_MAX_WEIGHT_BYTES: usize = 256 << 10;
/// Bytes of depthwise output per band: comfortably inside L1/L2 next to the weights.
const FUSE_BAND_BYTES: usize = 48 << 10;
/// Fewest GEMM rows per band (a few MR = 12 tiles).
const FUSE_MIN_BAND_PIXELS: usize = 48;

/// Smallest activation traffic (bytes of input + output of one step, per image) for which the
/// leading layers run as a pipeline: L2's size. Below it the activations stay in L2 anyway and
/// the pipeline's per-row calls only cost (0.25-128 and 0.5-160: 3–10% slower at 1 thread);
/// above it they went through L3 (1.0-224: block 1 reads 1.6 MB and writes 3.2 MB).
pub(super) const PIPELINE_MIN_BYTES: usize = 2 << 20;

/// Pairs each depthwise step with the pointwise step after it where the pointwise weights are
/// small enough to stay in cache while the bands stream past.
pub(super) fn fuse_separable(layers: Vec<PlannedLayer>) -> Vec<PlannedLayer> {
    let mut out: Vec<PlannedLayer> = Vec::with_capacity(layers.len());
    for layer in layers {
        match (out.pop(), layer) {
            (
                Some(PlannedLayer {
                    op: Op::Depthwise(depthwise),
                    name,
                    input,
                    output: dw_output,
                    mult_adds: dw_mult_adds,
                    min: dw_min,
                    max: dw_max,
                    ..
                }),
                PlannedLayer {
                    op: Op::Pointwise(pointwise),
                    last,
                    input: pw_input,
                    output,
                    mult_adds,
                    min,
                    max,
                    ..
                },
            ) if pw_input[2] * output[2] * 4 <= FUSE_MAX_WEIGHT_BYTES && dw_output == pw_input => {
                let [dw_h, ow, c] = dw_output;
                let row_bytes = ow * c * 4;
                let band_rows = (FUSE_BAND_BYTES / row_bytes)
                    .max(FUSE_MIN_BAND_PIXELS.div_ceil(ow))
                    .clamp(1, dw_h);
                // Both layers end in the same activation, so the step's clamp serves both.
                debug_assert!(dw_min == min && dw_max == max);
                out.push(PlannedLayer {
                    name: format!("{name}+pointwise"),
                    last,
                    kind: LayerKind::Pointwise,
                    input,
                    output,
                    mult_adds: dw_mult_adds + mult_adds,
                    op: Op::Separable(Separable {
                        depthwise,
                        pointwise,
                        band_rows,
                    }),
                    min,
                    max,
                });
            }
            (prev, layer) => {
                out.extend(prev);
                out.push(layer);
            }
        }
    }
    out
}

/// Joins the stem and the fused separable pairs right after it into one row pipeline, if one of
/// them moves at least `min_bytes` of activations per image; at most `max_steps` steps.
pub(super) fn fuse_pipeline(
    layers: Vec<PlannedLayer>,
    min_bytes: usize,
    max_steps: usize,
) -> Vec<PlannedLayer> {
    let lead = layers
        .iter()
        .enumerate()
        .take_while(|&(i, l)| match l.op {
            Op::Conv(_) => i == 0,
            Op::Separable(_) => true,
            _ => false,
        })
        .count()
        .min(MAX_STAGES)
        .min(max_steps);
    let traffic = layers[..lead]
        .iter()
        .map(|l| 4 * (l.input.iter().product::<usize>() + l.output.iter().product::<usize>()))
        .max()
        .unwrap_or(0);
    if lead < 2 || !matches!(layers[0].op, Op::Conv(_)) || traffic < min_bytes {
        return layers;
    }
    let mut rest = layers;
    let tail = rest.split_off(lead);
    let (first, last) = (&rest[0], &rest[lead - 1]);
    let name = format!("{}..{}", first.name, last.name);
    let (input, output, min, max) = (first.input, last.output, last.min, last.max);
    let last_layer = last.last.clone();
    let mult_adds = rest.iter().map(|l| l.mult_adds).sum();
    let mut stages: Vec<Stage> = rest
        .into_iter()
        .filter_map(|l| {
            let geometry = match &l.op {
                Op::Conv(conv) => conv.geometry,
                Op::Separable(sep) => sep.depthwise.geometry,
                _ => return None,
            };
            Some(Stage {
                chunk: FUSE_MIN_BAND_PIXELS
                    .div_ceil(l.output[1])
                    .clamp(1, l.output[0]),
                geometry,
                layer: l,
                ring: 0,
            })
        })
        .collect();
    // Stage s − 1's ring must hold every input row of stage s's chunk (its 3×3 window over
    // `(chunk − 1)·stride + 3` rows) plus the rows stage s − 1 computed past them in its last
    // chunk (< its chunk); a multiple of the chunk so that chunks do not wrap around.
    for s in 1..stages.len() {
        let (chunk, stride) = (stages[s].chunk, stages[s].geometry.stride);
        let prev = &mut stages[s - 1];
        let rows = (chunk - 1) * stride + KERNEL + prev.chunk - 1;
        prev.ring = rows.div_ceil(prev.chunk) * prev.chunk;
    }
    let mut out = Vec::with_capacity(tail.len() + 1);
    out.push(PlannedLayer {
        name,
        last: last_layer,
        kind: LayerKind::Pointwise,
        input,
        output,
        mult_adds,
        op: Op::Pipeline(stages),
        min,
        max,
    });
    out.extend(tail);
    out
}
