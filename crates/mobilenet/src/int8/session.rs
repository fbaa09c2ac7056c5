//! Running a planned [`QuantEngine`]: buffers, threads and the step loop.

use std::time::{Duration, Instant};

use mobilenet_kernels::int8::dwconv::qdwconv3x3;
use mobilenet_kernels::int8::gemm::qgemm;
use mobilenet_kernels::int8::gemm::stem::{qstem, qstem_supported};
use mobilenet_kernels::int8::{avg_pool, im2col3x3};

use super::engine::{QuantEngine, Step};
use super::reference::softmax_into;
use crate::exec::{for_each_part, for_each_part2, qgemm_split, resolve_threads, split, SpinPool};

impl QuantEngine {
    /// A runner with its own buffers and `threads` threads (0: all cores).
    pub fn session(&self, threads: usize) -> QuantSession<'_> {
        let threads = resolve_threads(threads);
        QuantSession {
            engine: self,
            pool: SpinPool::new(threads),
            a: vec![0; self.max_len],
            b: vec![0; self.max_len],
            col: vec![0; self.col_len],
            out: vec![0; self.output_len()],
            head_bytes: vec![
                0;
                self.heads
                    .iter()
                    .map(|h| h.1.output_len())
                    .max()
                    .unwrap_or(0)
            ],
            head_out: self
                .heads
                .iter()
                .map(|h| vec![0; h.1.output_len()])
                .collect(),
            profile: None,
        }
    }
}

/// Buffers and threads for running a [`QuantEngine`].
#[derive(Debug)]
pub struct QuantSession<'e> {
    engine: &'e QuantEngine,
    pool: SpinPool,
    a: Vec<u8>,
    b: Vec<u8>,
    col: Vec<u8>,
    out: Vec<i32>,
    head_bytes: Vec<u8>,
    head_out: Vec<Vec<i32>>,
    profile: Option<Vec<Duration>>,
}

impl QuantSession<'_> {
    /// Compute threads.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Starts accumulating the time spent in each step (see [`QuantSession::profile`]).
    pub fn enable_profile(&mut self) {
        self.profile = Some(vec![Duration::ZERO; self.engine.steps.len()]);
    }

    /// Time per step since [`QuantSession::enable_profile`], in the order of
    /// [`QuantEngine::step_names`].
    pub fn profile(&self) -> Option<&[Duration]> {
        self.profile.as_deref()
    }

    /// Runs one image given as bytes (see [`QuantEngine::to_byte`]) and returns the quantized
    /// outputs in the model's own domain (0..=255 for uint8, −128..=127 for int8).
    ///
    /// # Panics
    ///
    /// If `input.len()` is not [`QuantEngine::input_len`].
    pub fn run(&mut self, input: &[u8]) -> &[i32] {
        let e = self.engine;
        assert_eq!(
            input.len(),
            e.input_len(),
            "input must be {} bytes",
            e.input_len()
        );
        let isa = e.isa();
        self.a[..input.len()].copy_from_slice(input);
        let mut len = input.len();
        // Whether the last step (a softmax) wrote the outputs itself.
        let mut probabilities = false;
        for (i, step) in e.steps.iter().enumerate() {
            let started = self.profile.as_ref().map(|_| Instant::now());
            let (src, dst) = (&self.a[..len], &mut self.b[..]);
            let pool = &mut self.pool;
            match step {
                Step::Stem {
                    g,
                    cin,
                    kp,
                    pad,
                    b,
                    direct,
                    row_coeff,
                    rq,
                } => {
                    let n = b.n();
                    let out = &mut dst[..g.out_h * g.out_w * n];
                    // Each thread's band of output rows: the direct kernel where it runs, else
                    // im2col and the GEMM.
                    let ranges = split(g.out_h, pool.threads(), 1);
                    match direct
                        .as_ref()
                        .filter(|w| qstem_supported(isa, g, w, *row_coeff))
                    {
                        Some(w) => for_each_part(pool, out, &ranges, g.out_w * n, |_, r0, out| {
                            if !out.is_empty() {
                                qstem(isa, g, src, *pad, w, *row_coeff, rq, out, r0);
                            }
                        }),
                        None => {
                            let col = &mut self.col[..g.out_h * g.out_w * kp];
                            let (cols, outs) = ((col, g.out_w * kp), (out, g.out_w * n));
                            for_each_part2(pool, cols, outs, &ranges, |t, _, colt, out| {
                                let r = &ranges[t];
                                if r.is_empty() {
                                    return;
                                }
                                im2col3x3(g, *cin, src, *pad, r.clone(), *kp, colt);
                                qgemm(
                                    isa,
                                    r.len() * g.out_w,
                                    colt,
                                    *kp,
                                    b,
                                    *row_coeff,
                                    rq,
                                    out,
                                    n,
                                    0..b.panels(),
                                );
                            });
                        }
                    }
                }
                Step::Gemm {
                    pixels,
                    b,
                    row_coeff,
                    rq,
                } => {
                    qgemm_split(pool, isa, *pixels, src, b, *row_coeff, rq, dst);
                }
                Step::Depthwise { g, w, rq } => {
                    let row = g.out_w * w.channels();
                    let ranges = split(g.out_h, pool.threads(), 1);
                    for_each_part(
                        pool,
                        &mut dst[..g.out_h * row],
                        &ranges,
                        row,
                        |_, r0, out| {
                            if !out.is_empty() {
                                qdwconv3x3(isa, g, src, w, rq, out, r0);
                            }
                        },
                    );
                }
                Step::Pool {
                    pixels,
                    c,
                    min,
                    max,
                } => {
                    avg_pool(src, *pixels, *c, e.offset, *min, *max, dst);
                }
                Step::Softmax {
                    table,
                    output_scale,
                    output_zp,
                    signed,
                } => {
                    let out = &mut self.out[..src.len()];
                    let params = (*output_scale, *output_zp, *signed);
                    softmax_into(table, params, |i| src[i] as i32 - e.offset, out);
                    probabilities = true;
                    if let (Some(p), Some(t)) = (&mut self.profile, started) {
                        p[i] += t.elapsed();
                    }
                    continue;
                }
            }
            len = step.output_len();
            for ((after, head), out) in e.heads.iter().zip(&mut self.head_out) {
                let Step::Gemm {
                    pixels,
                    b,
                    row_coeff,
                    rq,
                } = head
                else {
                    unreachable!("heads are planned as GEMMs");
                };
                if *after != i {
                    continue;
                }
                let bytes = &mut self.head_bytes[..out.len()];
                let src = &self.b[..len];
                qgemm_split(&mut self.pool, isa, *pixels, src, b, *row_coeff, rq, bytes);
                for (o, &v) in out.iter_mut().zip(bytes.iter()) {
                    *o = v as i32 - e.offset;
                }
            }
            if let (Some(p), Some(t)) = (&mut self.profile, started) {
                p[i] += t.elapsed();
            }
            std::mem::swap(&mut self.a, &mut self.b);
        }
        if !probabilities {
            for (o, &v) in self.out.iter_mut().zip(&self.a[..len]) {
                *o = v as i32 - e.offset;
            }
        }
        &self.out
    }

    /// The heads' outputs of the last [`QuantSession::run`] (quantized values in the model's
    /// domain), in the order of the model's outputs.
    pub fn heads(&self) -> &[Vec<i32>] {
        &self.head_out
    }
}
