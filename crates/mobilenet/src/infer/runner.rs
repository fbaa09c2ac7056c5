//! The f32 engine as a [`Classifier`]: pixels normalised into its input, logits to
//! probabilities.

use std::time::Duration;

use super::{InferenceModel, Session};
use crate::classifier::{check_pixels, softmax_rows, Classifier, ModelInfo, Runner, StepInfo};

impl Classifier for InferenceModel {
    fn precision(&self) -> &'static str {
        InferenceModel::precision(self).name()
    }
    fn isa(&self) -> String {
        match InferenceModel::precision(self) {
            super::Precision::F32 => InferenceModel::isa(self).to_string(),
            p => format!("{}, {p} GEMMs", InferenceModel::isa(self)),
        }
    }
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn info_mut(&mut self) -> &mut ModelInfo {
        &mut self.info
    }
    fn steps(&self) -> Vec<StepInfo> {
        self.layers()
            .iter()
            .map(|l| StepInfo {
                name: l.name.clone(),
                kind: l.step_kind(),
                mult_adds: l.mult_adds,
            })
            .collect()
    }
    fn working_bytes(&self, batch: usize) -> u64 {
        self.activation_bytes(batch)
    }
    fn runner(&self, batch: usize, threads: usize) -> Box<dyn Runner + '_> {
        let session = self.session(batch, threads);
        let batch = session.batch();
        Box::new(F32Runner {
            norm: self.preprocessing().norm.affine(),
            input: vec![0.0; batch * self.input_len()],
            logits: vec![0.0; batch * self.output_len()],
            per: self.input_len(),
            classes: self.output_len(),
            session,
        })
    }
}

/// [`Runner`] of the f32 engine: pixels normalised into its input.
struct F32Runner<'m> {
    session: Session<'m>,
    norm: ([f32; 3], [f32; 3]),
    input: Vec<f32>,
    logits: Vec<f32>,
    per: usize,
    classes: usize,
}

impl Runner for F32Runner<'_> {
    fn batch(&self) -> usize {
        self.session.batch()
    }
    fn threads(&self) -> usize {
        self.session.threads()
    }
    fn load(&mut self, pixels: &[u8]) {
        check_pixels(pixels, self.per, self.batch());
        let (scale, offset) = self.norm;
        for (o, px) in self.input.chunks_exact_mut(3).zip(pixels.chunks_exact(3)) {
            for c in 0..3 {
                o[c] = px[c] as f32 * scale[c] + offset[c];
            }
        }
        self.input[pixels.len()..].fill(0.0);
    }
    fn run(&mut self) {
        let out = self.session.run(&self.input);
        self.logits.copy_from_slice(out);
    }
    fn probabilities(&self, out: &mut [f32]) {
        softmax_rows(&self.logits, self.classes, out);
    }
    fn enable_profiling(&mut self) {
        self.session.enable_profiling();
    }
    fn profile(&self) -> Option<Vec<Duration>> {
        self.session.profile().map(<[Duration]>::to_vec)
    }
}
