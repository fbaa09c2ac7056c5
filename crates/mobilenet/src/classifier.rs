//! The one interface every runtime implements: take images, run a batch, give probabilities.
//!
//! `eval`, `classify`, `bench` (and the server, WebAssembly and GPU backends to come) are
//! written once against [`Classifier`] and [`Runner`]; the f32 engine ([`InferenceModel`]) and
//! the integer engine ([`QuantizedModel`]) implement them. Images enter as 8-bit pixels after
//! the model's crop and resize ([`Classifier::pixels`]): each runtime turns them into its own
//! input (the f32 engine normalises them, the integer engine takes the bytes as they are,
//! since its input quantization is the normalisation).

use std::path::Path;
use std::time::Duration;

use image::RgbImage;

use crate::config::MobileNetConfig;
use crate::error::ModelError;
use crate::infer::InferenceModel;
use crate::int8::QuantizedModel;
use crate::memory::MemoryError;
use crate::preprocess::Preprocessing;
use crate::tflite::{self, ElementType};
use crate::weights::ModelFile;

/// One step of a runtime's plan, for reports and profiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepInfo {
    /// The step's name (a layer-table name, or several joined).
    pub name: String,
    /// What it runs (`conv`, `dw+pw`, `pipeline`, …; the integer engine's step names).
    pub kind: &'static str,
    /// Mult-Adds per image (0 where the runtime does not count them).
    pub mult_adds: u64,
}

/// What every runtime knows of its model besides the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// The network.
    pub config: MobileNetConfig,
    /// Crop, resize and (for float runtimes) normalisation.
    pub preprocessing: Preprocessing,
    /// One label per class, if the model has them.
    pub labels: Option<Vec<String>>,
}

/// A MobileNet classifier on some runtime.
pub trait Classifier: std::fmt::Debug + Send + Sync {
    /// The numbers it computes in: `f32`, `uint8` or `int8`.
    fn precision(&self) -> &'static str;
    /// The instruction set its kernels run with.
    fn isa(&self) -> String;
    /// The network, its preprocessing and labels.
    fn info(&self) -> &ModelInfo;
    /// The same, to change the crop or the labels.
    fn info_mut(&mut self) -> &mut ModelInfo;
    /// The runtime's steps, in the order [`Runner::profile`] reports them.
    fn steps(&self) -> Vec<StepInfo>;
    /// A runner for `batch` images at a time on `threads` threads (0: all cores).
    fn runner(&self, batch: usize, threads: usize) -> Box<dyn Runner + '_>;

    /// The network.
    fn config(&self) -> &MobileNetConfig {
        &self.info().config
    }
    /// Crop, resize and (for float runtimes) normalisation.
    fn preprocessing(&self) -> &Preprocessing {
        &self.info().preprocessing
    }
    /// Class labels, if the model has them.
    fn labels(&self) -> Option<&[String]> {
        self.info().labels.as_deref()
    }
    /// Sets the central-crop fraction applied by [`Classifier::pixels`].
    fn set_crop(&mut self, crop: f32) {
        self.info_mut().preprocessing.crop = crop;
    }
    /// Replaces the labels.
    ///
    /// # Errors
    ///
    /// A count other than the number of classes.
    fn set_labels(&mut self, labels: Vec<String>) -> Result<(), ModelError> {
        let classes = self.classes();
        if Some(labels.len()) != classes {
            return Err(ModelError::Metadata {
                path: "<labels>".into(),
                reason: format!(
                    "{} labels for a model with {} classes",
                    labels.len(),
                    classes.unwrap_or(0)
                ),
            });
        }
        self.info_mut().labels = Some(labels);
        Ok(())
    }
    /// Bytes a runner of `batch` images allocates beyond the model (activation buffers).
    fn working_bytes(&self, _batch: usize) -> u64 {
        0
    }

    /// [`Classifier::runner`], after checking that its buffers fit in the memory available
    /// (a batch or resolution too large for the machine aborted on allocation).
    ///
    /// # Errors
    ///
    /// [`MemoryError`] naming the need and what is available.
    fn try_runner(
        &self,
        batch: usize,
        threads: usize,
    ) -> Result<Box<dyn Runner + '_>, MemoryError> {
        crate::memory::check(self.working_bytes(batch), || {
            format!(
                "a batch of {batch} at {0}×{0} ({1})",
                self.resolution(),
                self.config()
            )
        })?;
        Ok(self.runner(batch, threads))
    }

    /// Number of classes, or `None` for a feature extractor.
    fn classes(&self) -> Option<usize> {
        self.config().classes()
    }
    /// Input side in pixels.
    fn resolution(&self) -> usize {
        self.config().resolution()
    }
    /// Bytes per image of [`Classifier::pixels`]: `resolution² · 3`.
    fn pixels_len(&self) -> usize {
        self.resolution() * self.resolution() * 3
    }
    /// The model's crop and resize of `img`: `resolution² · 3` RGB bytes.
    fn pixels(&self, img: &RgbImage) -> Vec<u8> {
        let resized = self.preprocessing().pixels(img, self.resolution());
        resized.as_ref().unwrap_or(img).as_raw().clone()
    }
}

/// Runs a [`Classifier`] on batches, reusing its buffers between calls.
pub trait Runner {
    /// Images per call.
    fn batch(&self) -> usize;
    /// Threads used.
    fn threads(&self) -> usize;
    /// Loads up to `batch` images of [`Classifier::pixels`] (the rest of the batch is zeros).
    ///
    /// # Panics
    ///
    /// If `pixels` is not whole images or holds more than `batch`.
    fn load(&mut self, pixels: &[u8]);
    /// Runs the network on the loaded batch.
    fn run(&mut self);
    /// Class probabilities of the last run: `batch × classes` values into `out`.
    fn probabilities(&self, out: &mut [f32]);
    /// Starts adding up the time spent in each step.
    fn enable_profiling(&mut self);
    /// Time per step since [`Runner::enable_profiling`], in [`Classifier::steps`] order.
    fn profile(&self) -> Option<Vec<Duration>>;
}

/// Softmax of each row of `logits` (`classes` values a row) into `out`.
pub fn softmax_rows(logits: &[f32], classes: usize, out: &mut [f32]) {
    for (row, o) in logits.chunks(classes).zip(out.chunks_mut(classes)) {
        mobilenet_kernels::pool::softmax(row, o);
    }
}

/// Checks that `pixels` is at most `batch` whole images of `per` bytes.
pub(crate) fn check_pixels(pixels: &[u8], per: usize, batch: usize) {
    assert!(
        pixels.len().is_multiple_of(per) && pixels.len() <= batch * per,
        "{} bytes are not at most {batch} images of {per} bytes",
        pixels.len()
    );
}

/// A model as `classify`, `eval` and `bench` take it: float (our model file, TF-slim/Keras
/// weights or a float `.tflite`) or a quantized `.tflite`.
#[derive(Debug)]
pub enum AnyModel {
    /// Runs on the f32 engine.
    Float(ModelFile),
    /// Runs on the integer engine.
    Quantized(Box<QuantizedModel>),
}

impl AnyModel {
    /// Reads `path` once and loads it by its contents: a `.tflite` with an 8-bit input is
    /// quantized, any other `.tflite` or weight file goes through [`crate::import`].
    ///
    /// # Errors
    ///
    /// An unreadable or malformed file; a graph or weights that are not a MobileNet v1.
    pub fn load(path: &Path) -> Result<AnyModel, ModelError> {
        let bytes = crate::files::read_regular(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        AnyModel::from_bytes(&bytes, path)
    }

    /// [`AnyModel::load`] of a file already read (`path` names it in errors and tells the
    /// importer its format by its extension, as for a file).
    ///
    /// # Errors
    ///
    /// As [`AnyModel::load`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<AnyModel, ModelError> {
        let detector = || ModelError::Metadata {
            path: path.to_path_buf(),
            reason: "an SSD detector, not a classifier: run it with `mobilenet detect`".into(),
        };
        if crate::detect::is_detector(bytes) {
            return Err(detector());
        }
        if tflite::is_tflite(bytes) {
            let g = tflite::read(bytes, path).map_err(|e| ModelError::Metadata {
                path: e.path,
                reason: e.reason,
            })?;
            if g.metadata_entry(crate::detect::DETECTOR_METADATA).is_some() {
                return Err(detector());
            }
            let float_input = g
                .inputs
                .first()
                .and_then(|&i| g.tensors.get(i))
                .is_some_and(|t| t.kind == ElementType::F32);
            if !float_input {
                return QuantizedModel::from_graph(&g, path)
                    .map(|q| AnyModel::Quantized(Box::new(q)));
            }
        }
        let (model, _) = crate::import::import_bytes(bytes, path, &Default::default())?;
        Ok(AnyModel::Float(model))
    }

    /// Chooses the integer engine's requantization (quantized models; a float model takes
    /// only the default).
    ///
    /// # Errors
    ///
    /// XNNPACK's form asked of a float model, or a layer scale it cannot take.
    pub fn set_requantization(
        &mut self,
        r: crate::int8::Requantization,
        path: &Path,
    ) -> Result<(), ModelError> {
        let bad = |reason: String| ModelError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        match self {
            AnyModel::Quantized(q) => q.set_requantization(r).map_err(|e| bad(e.to_string())),
            AnyModel::Float(_) if r == crate::int8::Requantization::Tflite => Ok(()),
            AnyModel::Float(_) => Err(bad(format!(
                "a float model: the {} requantization is for quantized .tflite files",
                r.name()
            ))),
        }
    }

    /// The model on its runtime: the f32 engine for the detected instruction set, or the
    /// integer engine.
    ///
    /// # Errors
    ///
    /// A float model whose weights do not match its layer table.
    pub fn into_classifier(self) -> Result<Box<dyn Classifier>, ModelError> {
        Ok(match self {
            AnyModel::Float(file) => Box::new(InferenceModel::new(&file)?),
            AnyModel::Quantized(q) => q,
        })
    }

    /// [`AnyModel::into_classifier`] with the f32 engine's GEMMs at `precision` (`path` names
    /// the file in errors).
    ///
    /// # Errors
    ///
    /// As [`AnyModel::into_classifier`]; bf16 for a quantized model or on a CPU without
    /// AVX512-BF16.
    pub fn into_classifier_at(
        self,
        precision: crate::Precision,
        path: &Path,
    ) -> Result<Box<dyn Classifier>, ModelError> {
        let bad = |reason: String| ModelError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        match self {
            AnyModel::Float(file) => {
                let mut model = InferenceModel::new(&file)?;
                model
                    .set_precision(precision)
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Box::new(model))
            }
            AnyModel::Quantized(q) if precision == crate::Precision::F32 => Ok(q),
            AnyModel::Quantized(_) => Err(bad(format!(
                "a quantized model runs in int8; --precision {precision} is for float models"
            ))),
        }
    }
}

/// Loads any model file `classify`, `eval` and `bench` accept onto its runtime.
///
/// # Errors
///
/// As [`AnyModel::load`] and [`AnyModel::into_classifier`].
pub fn load(path: &Path) -> Result<Box<dyn Classifier>, ModelError> {
    AnyModel::load(path)?.into_classifier()
}

/// [`load`] with the integer engine's requantization and the f32 engine's precision chosen.
///
/// # Errors
///
/// As [`load`], [`AnyModel::set_requantization`] and [`AnyModel::into_classifier_at`].
pub fn load_with(
    path: &Path,
    requantization: crate::int8::Requantization,
    precision: crate::Precision,
) -> Result<Box<dyn Classifier>, ModelError> {
    let mut model = AnyModel::load(path)?;
    model.set_requantization(requantization, path)?;
    model.into_classifier_at(precision, path)
}
