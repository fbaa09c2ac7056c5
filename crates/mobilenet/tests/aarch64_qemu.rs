//! The aarch64 build, run on this x86-64 machine under qemu-user by `scripts/test_aarch64.sh`:
//! every kernel of crates/kernels (f32 NEON; int8 plain NEON, dot product and i8mm) against
//! its scalar definition on an emulated CPU with every extension and on a Cortex-A72 with
//! none, and the integer engine byte for byte equal to LiteRT on every ISA (tests/tflite.rs).
//!
//! Skips with the reason where qemu-aarch64, the cross linker or the target's standard
//! library is missing; fails when `CI=true` (`.ci/run` installs them). A cross build of the
//! tests, a few minutes the first time.

use std::path::Path;
use std::process::Command;

#[test]
fn aarch64_kernels_and_litert_parity_under_qemu() {
    if cfg!(not(target_arch = "x86_64")) {
        eprintln!("skipping: this is not an x86-64 machine (an aarch64 one runs the tests itself)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("sh")
        .arg(root.join("scripts/test_aarch64.sh"))
        .output()
        .expect("runs sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs the aarch64 cross tools: {stderr}"
        );
        eprintln!("skipping: {}", stderr.trim());
        return;
    }
    let results: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("== ") || l.starts_with("test result"))
        .collect();
    eprintln!("{}", results.join("\n"));
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    assert!(
        out.status.success(),
        "scripts/test_aarch64.sh failed:\n{stdout}\n(stderr, last lines)\n{tail}"
    );
    // Three runs, each with its passing line: a run that silently tested nothing would show.
    assert_eq!(
        results
            .iter()
            .filter(|l| l.starts_with("test result: ok"))
            .count(),
        3,
        "{results:?}"
    );
}
