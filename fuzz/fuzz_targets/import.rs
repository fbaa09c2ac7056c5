//! Weight import (TF-slim, Keras, native, TFLite; ONNX by its extension) on arbitrary bytes: an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilenet::import::{import_bytes, ImportOptions};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = import_bytes(data, Path::new("fuzz.safetensors"), &ImportOptions::default());
    let _ = import_bytes(data, Path::new("fuzz.onnx"), &ImportOptions::default());
});
