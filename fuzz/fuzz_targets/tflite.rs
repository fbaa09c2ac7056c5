//! The TFLite reader, MobileNet matcher, integer planner and writer on arbitrary bytes: an
//! error or a model, never a panic; what reads back after writing writes the same bytes; a
//! quantized model or int8 detector that loads runs one (small) image.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilenet::detect::QuantDetector;
use mobilenet::int8::QuantizedModel;
use mobilenet::tflite::{read, write, MobileNetGraph};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.tflite");
    let Ok(graph) = read(data, path) else { return };
    // Compared as bytes (a NaN scale is not equal to itself): writing what we read back gives
    // the same file.
    let bytes = write(&graph);
    let again = read(&bytes, path).expect("a graph we read must read back after writing");
    assert!(write(&again) == bytes, "the writer changed the graph");
    if let Ok(net) = MobileNetGraph::from_graph(&graph, path) {
        let _ = net.to_model_file(&graph, path);
    }
    if let Ok(q) = QuantizedModel::from_bytes(data, path) {
        if q.engine().input_len() <= 64 * 64 * 3 {
            let input = vec![128u8; q.engine().input_len()];
            let mut s = q.session(1);
            let _ = s.run(&input);
        }
    }
    if let Ok(d) = QuantDetector::from_bytes(data, path) {
        if d.engine().input_len() <= 64 * 64 * 3 {
            let input = vec![0.0f32; d.engine().input_len()];
            let _ = d.session(1).run(&input);
        }
    }
});
