//! Reading a quantized graph that is a chain of convolutions with 1×1 heads reading some of
//! its outputs — a detector as post-training quantization writes it — against the layers it
//! must hold.

use std::collections::HashMap;
use std::path::Path;

use super::ir::{ConvShape, QHead, QOp, QuantModel, Reader};
use crate::layers::Layer;
use crate::tflite::{ConvTensors, Graph, OpKind, TfliteError};

/// A head the graph must have: the chain layer whose output it reads, and its output channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadSpec {
    /// Name of the chain layer it reads.
    pub reads: String,
    /// Output channels.
    pub channels: usize,
}

/// The tensors of a convolution operator.
fn tensors(op: &crate::tflite::OpInfo) -> Option<ConvTensors> {
    let get = |i: usize| op.inputs.get(i).copied().flatten();
    Some(ConvTensors {
        input: get(0)?,
        weights: get(1)?,
        bias: get(2),
        output: *op.outputs.first()?,
    })
}

impl QuantModel {
    /// Plans a graph whose operators are the convolutions of `layers` in order (a PAD may
    /// precede one), plus one 1×1 convolution per entry of `heads`, whose outputs are the
    /// graph's outputs in that order.
    ///
    /// # Errors
    ///
    /// Any other operator, a convolution that does not continue the chain, a tensor whose
    /// shape is not the layer's, a head missing or reading another layer, or quantization
    /// parameters TFLite would refuse.
    pub fn chain(
        graph: &Graph,
        layers: &[Layer],
        heads: &[HeadSpec],
        path: &Path,
    ) -> Result<QuantModel, TfliteError> {
        let input = *graph.inputs.first().ok_or_else(|| TfliteError {
            path: path.to_path_buf(),
            reason: "the graph has no input".into(),
        })?;
        let r = Reader::new(graph, input, path)?;
        let shape_of = |t: usize| &graph.tensors[t].shape;
        let want_input = layers.first().map(|l| l.input).unwrap_or([0, 0, 3]);
        if shape_of(input)[..] != [1, want_input[0], want_input[1], want_input[2]] {
            return Err(r.bad(format!(
                "input shape {:?}, the detector takes [1, {}, {}, {}]",
                shape_of(input),
                want_input[0],
                want_input[1],
                want_input[2]
            )));
        }
        if graph.outputs.len() != heads.len() {
            return Err(r.bad(format!(
                "{} outputs, the detector has {} predictors",
                graph.outputs.len(),
                heads.len()
            )));
        }
        let check_shape = |t: usize, want: [usize; 3], what: &str| {
            if shape_of(t)[..] == [1, want[0], want[1], want[2]] {
                Ok(())
            } else {
                Err(r.bad(format!(
                    "{what}: tensor {:?} has shape {:?}, expected [1, {}, {}, {}]",
                    graph.tensors[t].name,
                    shape_of(t),
                    want[0],
                    want[1],
                    want[2]
                )))
            }
        };
        let mut ops = Vec::new();
        let mut planned: Vec<Option<QHead>> = vec![None; heads.len()];
        // Chain outputs: tensor → (op index, layer).
        let mut produced: HashMap<usize, (usize, &Layer)> = HashMap::new();
        let mut next = layers.iter();
        let mut cur = input;
        // A PAD's output tensor and its (top, left).
        let mut pad: Option<(usize, (usize, usize))> = None;
        for (n, op) in graph.ops.iter().enumerate() {
            match &op.kind {
                OpKind::Pad { paddings } => {
                    if op.inputs.first().copied().flatten() != Some(cur) {
                        return Err(r.bad(format!("operator {n} (PAD) does not read the chain")));
                    }
                    let out = *op
                        .outputs
                        .first()
                        .ok_or_else(|| r.bad(format!("operator {n} has no output")))?;
                    pad = Some((out, (paddings[1].0, paddings[2].0)));
                }
                OpKind::Conv2d { .. } | OpKind::Depthwise { .. } => {
                    let ct = tensors(op).ok_or_else(|| {
                        r.bad(format!("operator {n} lacks an input, weights or output"))
                    })?;
                    if let Some(h) = graph.outputs.iter().position(|&o| o == ct.output) {
                        let spec = &heads[h];
                        let Some(&(after, layer)) = produced.get(&ct.input) else {
                            return Err(
                                r.bad(format!("output {h} does not read an output of the chain"))
                            );
                        };
                        if layer.name != spec.reads {
                            return Err(r.bad(format!(
                                "output {h} reads {}, the detector's predictor {h} reads {}",
                                layer.name, spec.reads
                            )));
                        }
                        let [mh, mw, mc] = layer.output;
                        let out = [mh, mw, spec.channels];
                        check_shape(ct.output, out, &format!("predictor {h}"))?;
                        let shape = ConvShape {
                            cin: mc,
                            cout: spec.channels,
                            k: 1,
                            in_hw: (mh, mw),
                            out_hw: (mh, mw),
                        };
                        let conv = r.conv(&op.kind, ct, &format!("predictor {h}"), shape, None)?;
                        planned[h] = Some(QHead {
                            after,
                            conv,
                            output: r.activation(ct.output)?,
                        });
                        continue;
                    }
                    let l = next
                        .next()
                        .ok_or_else(|| r.bad(format!("operator {n}: more layers than expected")))?;
                    let (expected, p) = match pad.take() {
                        Some((t, p)) => (t, Some(p)),
                        None => (cur, None),
                    };
                    if ct.input != expected {
                        return Err(r.bad(format!(
                            "operator {n} ({}) does not read the previous layer",
                            l.name
                        )));
                    }
                    check_shape(ct.output, l.output, &l.name)?;
                    ops.push(QOp::Conv(r.conv(
                        &op.kind,
                        ct,
                        &l.name,
                        ConvShape::of(l),
                        p,
                    )?));
                    produced.insert(ct.output, (ops.len() - 1, l));
                    cur = ct.output;
                }
                other => {
                    return Err(r.bad(format!(
                        "operator {n} is {other:?}; a detector graph holds convolutions only"
                    )))
                }
            }
        }
        if let Some(l) = next.next() {
            return Err(r.bad(format!("the graph ends before layer {}", l.name)));
        }
        let heads = planned
            .into_iter()
            .enumerate()
            .map(|(h, p)| p.ok_or_else(|| r.bad(format!("no operator writes output {h}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(QuantModel {
            ops,
            heads,
            kind: r.kind,
            input: r.activation(input)?,
            output: r.activation(cur)?,
            input_len: want_input[0] * want_input[1] * want_input[2],
        })
    }

    /// Each head's output quantization `(scale, zero point)`, in output order.
    pub fn head_outputs(&self) -> Vec<(f32, i32)> {
        self.heads.iter().map(|h| h.output).collect()
    }
}
