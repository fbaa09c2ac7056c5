//! A session: one batch size, its activation buffers and a thread pool.

use std::time::{Duration, Instant};

use mobilenet_kernels::aligned::AlignedVec;

use super::op::{run_layer, Op};
use super::{InferenceModel, PlannedLayer};
use crate::exec::{par_gemm, resolve_threads, GemmSplit, SpinPool};
use mobilenet_kernels::Epilogue;

/// Per-image output size (values) from which a leading layer runs image by image in a batch:
/// 128 K values (512 KB), a quarter of L2.
const IMAGE_MAJOR_MIN_OUTPUT: usize = 128 << 10;

/// Runs an [`InferenceModel`] on batches of images, reusing its buffers between calls.
#[derive(Debug)]
pub struct Session<'m> {
    model: &'m InferenceModel,
    batch: usize,
    pool: SpinPool,
    ping: AlignedVec,
    pong: AlignedVec,
    /// Number of leading layers run one image at a time (0 for batch 1).
    image_major: usize,
    /// Whether pipelines stream rows (each thread takes whole images) or run their stages one
    /// after the other (threads would share an image's rows and recompute the rows at their
    /// borders in every stage: a third more work for 0.25-128 on 2 threads).
    stream: bool,
    /// Buffers for one image, for those layers.
    small_ping: AlignedVec,
    small_pong: AlignedVec,
    /// The heads' outputs (`batch ×` each head's values).
    heads: Vec<AlignedVec>,
    profile: Option<Vec<Duration>>,
}

impl<'m> Session<'m> {
    pub(super) fn new(model: &'m InferenceModel, batch: usize, threads: usize) -> Session<'m> {
        let batch = batch.max(1);
        let threads = resolve_threads(threads);
        // With one thread everything runs on the caller's thread: the pool has no workers.
        let pool = SpinPool::new(threads);
        let stream = batch.is_multiple_of(threads);
        let largest = model.largest_values(!stream);
        // Image-major prefix: the leading layers whose output per image is larger than their
        // weights (at 1.0-224: blocks 0–5, 0.8–3.2 MB of activations per image).
        let image_major = if batch > 1 {
            model
                .layers
                .iter()
                .take_while(|l| {
                    // A pipeline keeps its activations in cache by itself, and run on the whole
                    // batch its threads take whole images instead of sharing each one's rows.
                    !matches!(l.op, Op::Pipeline(_))
                        && l.output.iter().product::<usize>() >= IMAGE_MAJOR_MIN_OUTPUT
                })
                .count()
        } else {
            0
        };
        let small = if image_major > 0 { largest } else { 0 };
        Session {
            model,
            batch,
            pool,
            ping: AlignedVec::zeros(largest * batch),
            pong: AlignedVec::zeros(largest * batch),
            image_major,
            stream,
            small_ping: AlignedVec::zeros(small),
            small_pong: AlignedVec::zeros(small),
            heads: model
                .head_values()
                .into_iter()
                .map(|n| AlignedVec::zeros(n * batch))
                .collect(),
            profile: None,
        }
    }

    /// Images per call.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Threads used.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Starts recording the time spent in each layer (summed over calls).
    pub fn enable_profiling(&mut self) {
        self.profile = Some(vec![Duration::ZERO; self.model.layers.len()]);
    }

    /// Time per layer since profiling was enabled, in plan order.
    pub fn profile(&self) -> Option<&[Duration]> {
        self.profile.as_deref()
    }

    /// Runs `layer` on the batch in `ping` (`len` values), leaving its output there; returns
    /// the output's length.
    fn step(&mut self, layer: &PlannedLayer, len: usize) -> usize {
        let out_len = self.batch * layer.output.iter().product::<usize>();
        let (src, dst) = (&self.ping[..len], &mut self.pong[..out_len]);
        run_layer(self.model.isa, layer, self.batch, src, dst, &mut self.pool);
        std::mem::swap(&mut self.ping, &mut self.pong);
        out_len
    }

    /// The heads' outputs after [`Session::run`], in the order the plan lists them: for each
    /// image, the head's 1×1 convolution over the map it reads (`[h, w, cout]`).
    pub fn heads(&self) -> Vec<&[f32]> {
        self.heads.iter().map(|h| &h[..]).collect()
    }

    /// Runs the network on `input` (`batch` preprocessed images, NHWC) and returns the
    /// outputs (`batch × output_len`: logits, or features without a head).
    ///
    /// # Panics
    ///
    /// If `input.len() != batch · input_len()`.
    pub fn run(&mut self, input: &[f32]) -> &[f32] {
        self.run_observed(input, &mut |_, _| {})
    }

    /// Like [`Session::run`], calling `observe(layer, output)` after every layer with that
    /// layer's output for the whole batch (for batches of more than one image, the first
    /// layers run image by image and are observed once per image).
    pub fn run_observed(
        &mut self,
        input: &[f32],
        observe: &mut dyn FnMut(&PlannedLayer, &[f32]),
    ) -> &[f32] {
        let batch = self.batch;
        assert_eq!(
            input.len(),
            batch * self.model.input_len(),
            "input must be batch × resolution² × 3 values"
        );
        let model = self.model;
        let prefix = self.image_major;
        // Layers with large activations and small weights run one image at a time, so that
        // each image's activations stay in cache between layers; the rest run on the batch,
        // so that each weight matrix is read once per batch.
        if prefix > 0 {
            let in_len = model.input_len();
            let out_len: usize = model.layers[prefix - 1].output.iter().product();
            for image in 0..batch {
                let mut cur_len = in_len;
                self.small_ping[..in_len].copy_from_slice(&input[image * in_len..][..in_len]);
                for (i, layer) in model.layers[..prefix].iter().enumerate() {
                    // Only when profiling: WebAssembly in a browser has no `Instant`.
                    let start = self.profile.as_ref().map(|_| Instant::now());
                    let len: usize = layer.output.iter().product();
                    let (src, dst) = (&self.small_ping[..cur_len], &mut self.small_pong[..len]);
                    run_layer(model.isa, layer, 1, src, dst, &mut self.pool);
                    if let (Some(p), Some(start)) = (&mut self.profile, start) {
                        p[i] += start.elapsed();
                    }
                    std::mem::swap(&mut self.small_ping, &mut self.small_pong);
                    cur_len = len;
                    run_heads(
                        model,
                        i,
                        &self.small_ping[..cur_len],
                        (image, 1),
                        &mut self.heads,
                        &mut self.pool,
                    );
                    observe(layer, &self.small_ping[..cur_len]);
                }
                self.ping[image * out_len..][..out_len]
                    .copy_from_slice(&self.small_ping[..out_len]);
            }
        } else {
            self.ping[..input.len()].copy_from_slice(input);
        }
        let mut cur_len = match prefix {
            0 => input.len(),
            n => batch * model.layers[n - 1].output.iter().product::<usize>(),
        };
        for (i, layer) in model.layers.iter().enumerate().skip(prefix) {
            let start = self.profile.as_ref().map(|_| Instant::now());
            match &layer.op {
                Op::Pipeline(stages) if !self.stream => {
                    for stage in stages {
                        cur_len = self.step(&stage.layer, cur_len);
                    }
                }
                _ => cur_len = self.step(layer, cur_len),
            }
            run_heads(
                model,
                i,
                &self.ping[..cur_len],
                (0, batch),
                &mut self.heads,
                &mut self.pool,
            );
            if let (Some(p), Some(start)) = (&mut self.profile, start) {
                p[i] += start.elapsed();
            }
            observe(layer, &self.ping[..cur_len]);
        }
        &self.ping[..cur_len]
    }
}

/// Runs the heads that read step `step`'s output `src` (`images.1` images, the first of them
/// image `images.0` of the batch) into their buffers.
fn run_heads(
    model: &InferenceModel,
    step: usize,
    src: &[f32],
    (first, images): (usize, usize),
    outs: &mut [AlignedVec],
    pool: &mut SpinPool,
) {
    for (head, out) in model.heads.iter().zip(outs) {
        if head.step != step {
            continue;
        }
        let (cin, cout) = (head.gemm.weights.k(), head.gemm.weights.n());
        let epi = Epilogue::new(Some(&head.gemm.bias), f32::NEG_INFINITY, f32::INFINITY);
        let m = images * head.pixels;
        let dst = &mut out[first * head.values()..][..m * cout];
        par_gemm(
            pool,
            GemmSplit::Rows,
            m,
            (src, cin),
            &head.gemm.weights,
            (dst, cout),
            &epi,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MobileNetConfig, ModelFile};

    /// `threads` 0 means every core, and plans exactly as that explicit count does (a session
    /// once decided whether pipelines stream from the 0 itself).
    #[test]
    fn all_cores_plans_like_the_explicit_count() {
        let config = MobileNetConfig::new(0.25, 64).expect("config");
        let model = InferenceModel::new(&ModelFile::random(config, 1)).expect("plan");
        let cores = resolve_threads(0);
        for batch in [1, 2, 3, 4] {
            let (all, explicit) = (model.session(batch, 0), model.session(batch, cores));
            assert_eq!(all.threads(), cores);
            assert_eq!(all.stream, explicit.stream, "batch {batch}");
            assert_eq!(all.image_major, explicit.image_major, "batch {batch}");
        }
    }
}
