//! Prints the operators and tensors of a `.tflite` file as the reader sees them.
//!
//! `cargo run -p mobilenet --example tflite_dump -- model.tflite`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: tflite_dump FILE")?);
    let bytes = std::fs::read(&path)?;
    let g = mobilenet::tflite::read(&bytes, &path)?;
    println!("inputs {:?} outputs {:?}", g.inputs, g.outputs);
    for (i, op) in g.ops.iter().enumerate() {
        let shape = |t: &Option<usize>| {
            t.map(|t| format!("{:?}{:?}", g.tensors[t].kind, g.tensors[t].shape))
                .unwrap_or_default()
        };
        let ins: Vec<String> = op.inputs.iter().map(shape).collect();
        let outs: Vec<String> = op.outputs.iter().map(|&o| shape(&Some(o))).collect();
        println!("{i:>2} {:?} in {ins:?} out {outs:?}", op.kind);
    }
    Ok(())
}
