//! Helpers shared by the CLI tests that train.

#![allow(dead_code)] // each test crate uses its own subset

pub mod browser;
pub mod http;

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use mobilenet::data::Dataset;

/// The JSON object a successful command printed (fails the test with its stderr otherwise).
pub fn json_stdout(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

/// The binary under test.
pub fn mobilenet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mobilenet"))
}

/// Writes the first `n` built-in Fashion-MNIST images as IDX files (a small data set on disk).
pub fn small_fashion_mnist(dir: &Path, n: usize) {
    let data = Dataset::builtin_fashion_mnist();
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&(n as u32).to_be_bytes());
    for i in 0..n {
        images.extend(
            data.image(i)
                .expect("built-in image")
                .pixels()
                .map(|p| p.0[0]),
        );
        labels.push(data.label(i) as u8);
    }
    std::fs::create_dir_all(dir).expect("data dir");
    std::fs::write(dir.join("small-images-idx3-ubyte"), images).expect("write images");
    std::fs::write(dir.join("small-labels-idx1-ubyte"), labels).expect("write labels");
}

/// Waits until `path` exists (a run's lock or checkpoint appearing), failing after `limit`.
pub fn wait_for_file(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGINT (Ctrl-C) to `child` and waits for it.
pub fn interrupt(child: Child) -> Output {
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(kill.success());
    child.wait_with_output().expect("wait")
}

/// Three classes of 12 small PNGs each, plus a hidden folder that is not a class.
pub fn small_image_folder(dir: &Path) {
    for (c, class) in ["ant", "bee", "cat", ".cache"].iter().enumerate() {
        std::fs::create_dir_all(dir.join(class)).expect("class dir");
        for i in 0..12u32 {
            image::RgbImage::from_fn(16, 16, |x, y| {
                image::Rgb([(x * 16) as u8, (y * 16) as u8, (c as u32 * 80 + i) as u8])
            })
            .save(dir.join(class).join(format!("{i:02}.png")))
            .expect("png");
        }
    }
}
