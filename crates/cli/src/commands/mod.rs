pub mod arch;
pub mod bench;
pub mod classify;
pub mod eval;
pub mod import;
pub mod quantize;
pub mod train;

use std::path::Path;

/// A float model for inference: our model file, or a float `.tflite` (imported on the fly).
pub fn load_float_model(path: &Path) -> anyhow::Result<mobilenet::ModelFile> {
    let head = std::fs::read(path)
        .map(|b| mobilenet::tflite::is_tflite(&b))
        .unwrap_or(false);
    if head {
        let (model, _) = mobilenet::import::import(path, &Default::default())?;
        return Ok(model);
    }
    Ok(mobilenet::ModelFile::load(path)?)
}
