//! Resuming a training run from an arbitrary checkpoint file: an error naming the file, or a
//! trainer whose state is consistent, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilenet::train::trainer::Trainer;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("mobilenet-fuzz-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp folder");
    std::fs::write(dir.join("checkpoint.safetensors"), data).expect("write");
    if let Ok(trainer) = Trainer::resume(&dir) {
        // A checkpoint that loads can be written back.
        trainer.save_checkpoint().expect("a resumed run checkpoints");
    }
});
