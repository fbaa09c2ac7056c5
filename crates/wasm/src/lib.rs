//! MobileNet in the browser: the f32 engine (and the int8 one) compiled to WebAssembly, behind
//! a small API (classifiers here, SSD detectors in `detect.rs`) that `www/mobilenet.js` wraps in
//! promises.
//!
//! The kernels use WebAssembly SIMD128 when the module is built with it (`simd128`, and
//! `relaxed-simd` for a fused multiply-add); `scripts/build_wasm.sh` builds the three variants
//! and the loader picks the best one the browser validates. One thread: WebAssembly threads
//! need cross-origin isolation, which a plain static page does not have.
//!
//! Every input is checked before it reaches the engine. A Rust panic in WebAssembly is a trap
//! that leaves the module unusable, so nothing a page passes in may cause one: a malformed
//! model or image is an `Err`, which the JS side sees as a rejected promise.

mod detect;

use std::path::Path;

use image::RgbImage;
use mobilenet::classifier::softmax_rows;
use mobilenet::preprocess::Preprocessing;
use mobilenet::{AnyModel, Classifier, InferenceModel, Runner, Session};
use wasm_bindgen::prelude::*;

pub use detect::Detector;

/// Largest image side accepted (a canvas's limit in Chromium is 32767; 16384² RGBA is 1 GiB).
pub const MAX_SIDE: u32 = 16_384;

/// A loaded classifier and its buffers, reused between calls.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Model {
    engine: Engine,
    /// Crop, resize and normalisation (the page may change the crop; the engine's copy is
    /// shared with its session and stays as loaded).
    preprocessing: Preprocessing,
    /// The preprocessed input of the last image (f32 models).
    input: Vec<f32>,
}

self_cell::self_cell!(
    /// The f32 engine and its session (the session's buffers are reused between calls: at
    /// 1.0-224 a new one zeroes 6 MB).
    struct FloatEngine {
        owner: InferenceModel,
        #[not_covariant]
        dependent: Session,
    }
    impl {Debug}
);

type IntRunner<'a> = Box<dyn Runner + 'a>;

self_cell::self_cell!(
    /// The integer engine and its runner (buffers reused between calls, as for f32).
    struct IntEngine {
        owner: Box<dyn Classifier>,
        #[not_covariant]
        dependent: IntRunner,
    }
);

impl std::fmt::Debug for IntEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntEngine")
            .field("classifier", self.borrow_owner())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Engine {
    /// The f32 engine: logits are available.
    Float(Box<FloatEngine>),
    /// The integer engine (an int8 or uint8 `.tflite`): probabilities only.
    Int8(Box<IntEngine>),
}

impl Engine {
    fn classifier(&self) -> &dyn Classifier {
        match self {
            Engine::Float(m) => m.borrow_owner(),
            Engine::Int8(c) => c.borrow_owner().as_ref(),
        }
    }
}

pub(crate) fn error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen]
impl Model {
    /// Loads a model from the bytes of a file `classify` accepts: our safetensors, TF-slim or
    /// Keras weights in safetensors, a float `.tflite` or a quantized one. `name` (the file's
    /// name) appears in errors. `labels`, when given, is a labels file's text, one per line.
    ///
    /// # Errors
    ///
    /// A file that is not a MobileNet classifier, or labels that do not match its classes.
    #[wasm_bindgen(constructor)]
    pub fn new(bytes: &[u8], name: &str, labels: Option<String>) -> Result<Model, JsError> {
        let path = Path::new(name);
        let labels = labels
            .map(|text| mobilenet::import::parse_labels(&text, Path::new("labels")))
            .transpose()
            .map_err(error)?;
        let engine = match AnyModel::from_bytes(bytes, path).map_err(error)? {
            AnyModel::Float(file) => {
                let mut model = InferenceModel::new(&file).map_err(error)?;
                if let Some(labels) = labels {
                    model.set_labels(labels).map_err(error)?;
                }
                Engine::Float(Box::new(FloatEngine::new(model, |m| m.session(1, 1))))
            }
            AnyModel::Quantized(mut q) => {
                if let Some(labels) = labels {
                    q.set_labels(labels).map_err(error)?;
                }
                let q: Box<dyn Classifier> = q;
                Engine::Int8(Box::new(IntEngine::new(q, |c| c.runner(1, 1))))
            }
        };
        let c = engine.classifier();
        if c.classes().is_none() {
            return Err(error(format!(
                "{name}: a feature extractor (no classifier head); this API classifies"
            )));
        }
        Ok(Model {
            preprocessing: *c.preprocessing(),
            engine,
            input: Vec::new(),
        })
    }

    /// Input side in pixels.
    #[wasm_bindgen(getter)]
    pub fn resolution(&self) -> usize {
        self.engine.classifier().resolution()
    }

    /// Number of classes.
    #[wasm_bindgen(getter)]
    pub fn classes(&self) -> usize {
        self.engine.classifier().classes().unwrap_or(0)
    }

    /// `f32`, `uint8` or `int8`.
    #[wasm_bindgen(getter)]
    pub fn precision(&self) -> String {
        self.engine.classifier().precision().to_string()
    }

    /// The instruction set the kernels run with (`wasm128` or `scalar`).
    #[wasm_bindgen(getter)]
    pub fn isa(&self) -> String {
        self.engine.classifier().isa()
    }

    /// The network, as `classify` prints it (`MobileNet v1 1.0_224, 1001 classes, …`).
    #[wasm_bindgen(getter)]
    pub fn description(&self) -> String {
        self.engine.classifier().config().to_string()
    }

    /// The central-crop fraction applied before resizing (TF-slim: 0.875; 1 keeps the whole
    /// image).
    #[wasm_bindgen(getter)]
    pub fn crop(&self) -> f32 {
        self.preprocessing.crop
    }

    /// Sets the central-crop fraction.
    ///
    /// # Errors
    ///
    /// A fraction outside (0, 1].
    #[wasm_bindgen(setter)]
    pub fn set_crop(&mut self, crop: f32) -> Result<(), JsError> {
        if !(crop > 0.0 && crop <= 1.0) {
            return Err(error(format!("crop {crop}: must be in (0, 1]")));
        }
        self.preprocessing.crop = crop;
        Ok(())
    }

    /// The label of class `index` (`class <index>` when the model has none).
    pub fn label(&self, index: usize) -> String {
        self.engine
            .classifier()
            .labels()
            .and_then(|l| l.get(index).cloned())
            .unwrap_or_else(|| format!("class {index}"))
    }

    /// Class probabilities for an RGBA image (`width·height·4` bytes, as `ImageData.data`):
    /// the model's crop, resize and normalisation, then the network.
    ///
    /// # Errors
    ///
    /// A buffer that is not `width·height·4` bytes, or an empty or too large image.
    pub fn probabilities(
        &mut self,
        rgba: &[u8],
        width: u32,
        height: u32,
    ) -> Result<Vec<f32>, JsError> {
        let img = rgb_image(rgba, width, height)?;
        let classes = self.classes();
        let mut out = vec![0.0; classes];
        match &mut self.engine {
            Engine::Float(_) => {
                let logits = self.float_logits(&img)?;
                softmax_rows(&logits, classes, &mut out);
            }
            Engine::Int8(engine) => {
                let preprocessing = &self.preprocessing;
                engine.with_dependent_mut(|c, runner| {
                    let resized = preprocessing.pixels(&img, c.resolution());
                    runner.load(resized.as_ref().unwrap_or(&img).as_raw());
                    runner.run();
                    runner.probabilities(&mut out);
                });
            }
        }
        Ok(out)
    }

    /// The network's logits (before softmax) for an RGBA image, as [`Model::probabilities`]
    /// takes it. f32 models only.
    ///
    /// # Errors
    ///
    /// As [`Model::probabilities`]; an integer model (it outputs probabilities).
    pub fn logits(&mut self, rgba: &[u8], width: u32, height: u32) -> Result<Vec<f32>, JsError> {
        let img = rgb_image(rgba, width, height)?;
        self.float_logits(&img)
    }

    /// The logits for an input already preprocessed: `resolution²·3` floats, HWC, normalised
    /// as the model expects (what the reference runtimes were given).
    ///
    /// # Errors
    ///
    /// Another length, a non-finite value, or an integer model.
    pub fn logits_of_input(&mut self, input: &[f32]) -> Result<Vec<f32>, JsError> {
        let Engine::Float(engine) = &mut self.engine else {
            return Err(not_float());
        };
        let r = engine.borrow_owner().config().resolution();
        if input.len() != r * r * 3 {
            return Err(error(format!(
                "{} input values for a {r}×{r}×3 model",
                input.len()
            )));
        }
        if let Some(i) = input.iter().position(|v| !v.is_finite()) {
            return Err(error(format!("input value {i} is not finite")));
        }
        Ok(engine.with_dependent_mut(|_, session| session.run(input).to_vec()))
    }
}

fn not_float() -> JsError {
    error("logits: an integer model outputs probabilities only")
}

impl Model {
    fn float_logits(&mut self, img: &RgbImage) -> Result<Vec<f32>, JsError> {
        let Engine::Float(engine) = &mut self.engine else {
            return Err(not_float());
        };
        let r = engine.borrow_owner().config().resolution();
        self.input.resize(r * r * 3, 0.0);
        self.preprocessing.apply(img, r, &mut self.input);
        let input = &self.input;
        Ok(engine.with_dependent_mut(|_, session| session.run(input).to_vec()))
    }
}

/// The RGB image of an RGBA buffer, checked.
pub(crate) fn rgb_image(rgba: &[u8], width: u32, height: u32) -> Result<RgbImage, JsError> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(error(format!(
            "a {width}×{height} image: each side must be 1 to {MAX_SIDE} pixels"
        )));
    }
    let want = width as usize * height as usize * 4;
    if rgba.len() != want {
        return Err(error(format!(
            "{} bytes for a {width}×{height} RGBA image (needs {want})",
            rgba.len()
        )));
    }
    let rgb: Vec<u8> = rgba
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| error("image buffer size"))
}

/// The message of a panic, kept where the page can read it after the trap that follows
/// (`lastPanic()`): a panic is a bug, and its message is what a bug report needs.
#[wasm_bindgen(js_name = lastPanic)]
pub fn last_panic() -> Option<String> {
    PANIC.with(|p| p.borrow().clone())
}

thread_local! {
    static PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs the panic hook (called by the loader once the module is instantiated).
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let message = info.to_string();
        PANIC.with(|p| *p.borrow_mut() = Some(message));
    }));
}

/// The instruction set this build's kernels use (`wasm128` or `scalar`), before any model is
/// loaded.
#[wasm_bindgen(js_name = isa)]
pub fn isa_name() -> String {
    mobilenet_kernels::Isa::detect().to_string()
}
