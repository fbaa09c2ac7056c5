//! The TFLite reader and MobileNet matcher on arbitrary bytes: an error or a model, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilenet::tflite::{read, MobileNetGraph};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.tflite");
    if let Ok(graph) = read(data, path) {
        if let Ok(net) = MobileNetGraph::from_graph(&graph, path) {
            let _ = net.to_model_file(&graph, path);
        }
    }
});
