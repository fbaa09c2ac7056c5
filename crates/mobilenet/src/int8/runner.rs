//! The integer engine as a [`Classifier`]: the pixels are its input bytes.

use std::time::Duration;

use super::{QuantSession, QuantizedModel};
use crate::classifier::{check_pixels, Classifier, ModelInfo, Runner, StepInfo};
use crate::tflite::ElementType;

impl Classifier for QuantizedModel {
    fn precision(&self) -> &'static str {
        if self.kind() == ElementType::I8 {
            "int8"
        } else {
            "uint8"
        }
    }
    fn isa(&self) -> String {
        match self.engine().requantization() {
            super::Requantization::Tflite => self.engine().isa().to_string(),
            r => format!("{}, {} requantization", self.engine().isa(), r.name()),
        }
    }
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn info_mut(&mut self) -> &mut ModelInfo {
        &mut self.info
    }
    fn steps(&self) -> Vec<StepInfo> {
        self.engine()
            .step_names()
            .into_iter()
            .map(|name| StepInfo {
                name,
                kind: "int8",
                mult_adds: 0,
            })
            .collect()
    }
    fn runner(&self, batch: usize, threads: usize) -> Box<dyn Runner + '_> {
        let batch = batch.max(1);
        let per = self.engine().input_len();
        let classes = self.engine().output_len();
        Box::new(Int8Runner {
            model: self,
            session: self.session(threads),
            threads: crate::exec::resolve_threads(threads),
            batch,
            per,
            classes,
            input: vec![0; batch * per],
            output: vec![0; batch * classes],
        })
    }
}

/// [`Runner`] of the integer engine: the pixels are its input bytes; the images of a batch run
/// one after the other, each on all threads.
struct Int8Runner<'m> {
    model: &'m QuantizedModel,
    session: QuantSession<'m>,
    threads: usize,
    batch: usize,
    per: usize,
    classes: usize,
    input: Vec<u8>,
    output: Vec<i32>,
}

impl Runner for Int8Runner<'_> {
    fn batch(&self) -> usize {
        self.batch
    }
    fn threads(&self) -> usize {
        self.threads
    }
    fn load(&mut self, pixels: &[u8]) {
        check_pixels(pixels, self.per, self.batch);
        self.input[..pixels.len()].copy_from_slice(pixels);
        self.input[pixels.len()..].fill(0);
    }
    fn run(&mut self) {
        let images = self.input.chunks_exact(self.per);
        for (img, out) in images.zip(self.output.chunks_exact_mut(self.classes)) {
            out.copy_from_slice(self.session.run(img));
        }
    }
    fn probabilities(&self, out: &mut [f32]) {
        let rows = self.output.chunks_exact(self.classes);
        for (q, o) in rows.zip(out.chunks_exact_mut(self.classes)) {
            o.copy_from_slice(&self.model.probabilities(q));
        }
    }
    fn enable_profiling(&mut self) {
        self.session.enable_profile();
    }
    fn profile(&self) -> Option<Vec<Duration>> {
        self.session.profile().map(<[Duration]>::to_vec)
    }
}
