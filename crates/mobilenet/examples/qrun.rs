//! Runs a quantized `.tflite` file with the integer engine on raw images and prints the output
//! values (in the model's own domain) one image per line — for comparing with TFLite
//! (`scripts/litert_parity.py`). For an int8 detector the line holds every output (each map's
//! box codes, then its class logits) in the graph's output order.
//!
//! `cargo run --release -p mobilenet --example qrun -- model.tflite images.raw`, where
//! `images.raw` holds whole images of `resolution² · 3` pixel bytes back to back.

use std::io::Write;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, images] = &args[..] else {
        return Err("usage: qrun <model.tflite> <images.raw>".into());
    };
    let raw = std::fs::read(images)?;
    if mobilenet::detect::is_detector_file(Path::new(model)) {
        let d = mobilenet::detect::QuantDetector::load(Path::new(model))?;
        let n = d.engine().input_len();
        if raw.is_empty() || raw.len() % n != 0 {
            return Err(format!("{images}: not a whole number of {n}-byte images").into());
        }
        let mut session = d.engine().session(1);
        let mut out = std::io::stdout().lock();
        for img in raw.chunks(n) {
            session.run(img);
            let values: Vec<String> = session
                .heads()
                .iter()
                .flatten()
                .map(i32::to_string)
                .collect();
            writeln!(out, "{}", values.join(" "))?;
        }
        return Ok(());
    }
    let mut q = mobilenet::int8::QuantizedModel::load(Path::new(model))?;
    // MOBILENET_REQUANT=xnnpack: XNNPACK's single-precision requantization.
    if std::env::var("MOBILENET_REQUANT").as_deref() == Ok("xnnpack") {
        q.set_requantization(mobilenet::int8::Requantization::Xnnpack)?;
    }
    let n = q.engine().input_len();
    if raw.is_empty() || raw.len() % n != 0 {
        return Err(format!("{images}: not a whole number of {n}-byte images").into());
    }
    let mut session = q.session(1);
    let mut out = std::io::stdout().lock();
    for img in raw.chunks(n) {
        let values: Vec<String> = session.run(img).iter().map(i32::to_string).collect();
        writeln!(out, "{}", values.join(" "))?;
    }
    Ok(())
}
