//! SSD detectors in the browser: a detector file (ours, or face-api's imported) on the f32
//! engine, or an int8 detector `.tflite` on the integer engine.

use std::path::Path;

use mobilenet::detect::{AnyDetector, DetectSession, NmsConfig};
use wasm_bindgen::prelude::*;

use crate::{error, rgb_image};

type Session<'a> = Box<dyn DetectSession + 'a>;

self_cell::self_cell!(
    /// A detector and its session (buffers reused between images).
    struct Engine {
        owner: AnyDetector,
        #[not_covariant]
        dependent: Session,
    }
);

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("detector", self.borrow_owner())
            .finish_non_exhaustive()
    }
}

/// A loaded detector.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Detector {
    engine: Engine,
}

#[wasm_bindgen]
impl Detector {
    /// Loads a detector from the bytes of a file `mobilenet detect` accepts. `name` appears in
    /// errors.
    ///
    /// # Errors
    ///
    /// A file that is not a detector, or a malformed one.
    #[wasm_bindgen(constructor)]
    pub fn new(bytes: &[u8], name: &str) -> Result<Detector, JsError> {
        let detector = AnyDetector::from_bytes(bytes, Path::new(name)).map_err(error)?;
        Ok(Detector {
            engine: Engine::new(detector, |d| d.session(1)),
        })
    }

    /// Input side in pixels (images are fitted to it).
    #[wasm_bindgen(getter)]
    pub fn resolution(&self) -> usize {
        self.engine.borrow_owner().config().input
    }

    /// `f32` or `int8`.
    #[wasm_bindgen(getter)]
    pub fn precision(&self) -> String {
        self.engine.borrow_owner().precision().to_string()
    }

    /// The detector's name (`face-api SSD MobileNet v1`, `SSD300 COCO`, …).
    #[wasm_bindgen(getter)]
    pub fn description(&self) -> String {
        self.engine.borrow_owner().config().name.clone()
    }

    /// The detector's own minimum score, IoU and most detections: `[min_score, iou, max]`.
    #[wasm_bindgen(js_name = defaultNms)]
    pub fn default_nms(&self) -> Vec<f32> {
        let n = self.engine.borrow_owner().config().nms;
        vec![n.min_score, n.iou, n.max_detections as f32]
    }

    /// The label of class `class` (1 is the first; `?` for an unlabelled one).
    pub fn label(&self, class: usize) -> String {
        let labels = &self.engine.borrow_owner().config().labels;
        class
            .checked_sub(1)
            .and_then(|i| labels.get(i))
            .map_or_else(|| "?".to_string(), Clone::clone)
    }

    /// Detections in an RGBA image, suppressed with these settings: six numbers per detection,
    /// `class, score, x, y, width, height`, the box in the image's pixels.
    ///
    /// # Errors
    ///
    /// A buffer that is not `width·height·4` bytes, an empty or too large image, a minimum
    /// score outside [0, 1], an IoU outside (0, 1], or no detections allowed.
    pub fn detect(
        &mut self,
        rgba: &[u8],
        width: u32,
        height: u32,
        min_score: f32,
        iou: f32,
        max_detections: usize,
    ) -> Result<Vec<f32>, JsError> {
        let nms = NmsConfig {
            min_score,
            iou,
            max_detections,
        };
        nms.check(["minScore", "iou", "maxDetections"])
            .map_err(error)?;
        let img = rgb_image(rgba, width, height)?;
        let (found, frame) = self
            .engine
            .with_dependent_mut(|_, session| session.detect(&img, Some(&nms)));
        Ok(found
            .iter()
            .flat_map(|d| {
                let [x, y, w, h] = frame.to_pixels(d.bbox);
                [
                    d.class as f32,
                    d.score,
                    x as f32,
                    y as f32,
                    w as f32,
                    h as f32,
                ]
            })
            .collect())
    }
}
