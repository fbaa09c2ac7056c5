//! Our model-file parser on arbitrary bytes: an error or a valid model, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = mobilenet::ModelFile::from_bytes(data, Path::new("fuzz.safetensors")) {
        // A file that parses must be usable: plan it and run one tiny inference.
        if model.config.resolution() <= 64 && model.config.alpha() <= 0.5 {
            let plan = mobilenet::InferenceModel::new(&model).expect("a validated file plans");
            let input = vec![0.0; plan.input_len()];
            let _ = plan.session(1, 1).run(&input);
        }
    }
});
