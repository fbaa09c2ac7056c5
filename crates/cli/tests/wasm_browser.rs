//! The WebAssembly build (`crates/wasm`) in a real browser: headless Debian chromium loads the
//! package from `mobilenet serve --web`, runs the reference images of
//! `../shared/data/reference` through every build the browser runs (relaxed SIMD, SIMD128,
//! scalar) and checks the logits against TensorFlow's within 1e-3 and the int8 engine's
//! output against LiteRT's byte for byte; face-api's face detector finds face-api's faces; a
//! malformed model or image rejects the promise and the page goes on working; the demo page
//! classifies a picked image.
//!
//! The package is built here by `scripts/build_wasm.sh` (three release builds, a few minutes
//! the first time). Skips with a printed reason where chromium, chromedriver, the
//! wasm32 target, wasm-bindgen-cli or the shared data are missing; fails when `CI=true`
//! (`.ci/run` installs all of them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::browser::Browser;
use common::http::{s, Server};

#[path = "../../mobilenet/tests/common/mod.rs"]
mod shared;

/// Same tolerance as the native parity test (`crates/mobilenet/tests/tf_parity.rs`).
const LOGIT_TOLERANCE: f64 = 1e-3;

const FLOAT_MODEL: &str = "mobilenet_v1/float/mobilenet_v1_1.0_224_imagenet_float.safetensors";
const QUANT_MODEL: &str = "mobilenet_v1/quant_uint8/mobilenet_v1_0.25_128_quant.tflite";

/// The browser package, built once per test binary; `None` (after printing why) where the
/// tools are missing outside CI.
fn package(test: &str) -> Option<&'static Path> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-pkg");
        let run = Command::new("sh")
            .arg(root.join("scripts/build_wasm.sh"))
            .arg(&out)
            .current_dir(&root)
            .output()
            .map_err(|e| format!("cannot run scripts/build_wasm.sh: {e}"))?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        match run.status.success() {
            true => {
                eprintln!("{log}");
                Ok(out)
            }
            false => Err(format!("scripts/build_wasm.sh failed:\n{log}")),
        }
    });
    match built {
        Ok(dir) => Some(dir.as_path()),
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {why}"
            );
            eprintln!("skipping {test}: {why}");
            None
        }
    }
}

/// Standard base64, to hand files to the page.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            match i <= chunk.len() {
                true => out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char),
                false => out.push('='),
            }
        }
    }
    out
}

/// The page's helper: decodes a base64 image file the way a page gets an image
/// (createImageBitmap, no colour conversion) and returns its ImageData.
const DECODE: &str = "window.decodeImage = async (b64, type = 'image/png') => {
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type }),
        { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    const c = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = c.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
};";

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Setup {
    browser: Browser,
    _server: Server,
    _dir: TempDir,
    cases: Vec<serde_json::Value>,
    data: PathBuf,
}

/// chromium on `/web/` of a server running the float 1.0-224 and the uint8 0.25-128 models.
fn setup(test: &str) -> Option<Setup> {
    let data = shared::shared_data(test)?;
    let pkg = package(test)?;
    let browser = Browser::start(test)?;
    // face-api's detector, imported as `mobilenet import` does it.
    let dir =
        TempDir(std::env::temp_dir().join(format!("mobilenet-{test}-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("should succeed");
    let face = dir.0.join("face.safetensors");
    let manifest =
        data.join("detection/ssd_mobilenet_v1_face/ssd_mobilenetv1_model-weights_manifest.json");
    let out = common::mobilenet()
        .args(["import", s(&manifest), "-o", s(&face)])
        .output()
        .expect("run import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(&[
        "--model",
        s(&data.join(FLOAT_MODEL)),
        s(&data.join(QUANT_MODEL)),
        s(&face),
        "--labels",
        s(&data.join("imagenet/imagenet_labels_1001.txt")),
        "--threads",
        "1",
        "--web",
        s(pkg),
    ]);
    let text = std::fs::read_to_string(data.join("reference/mobilenet_v1_expected.json"))
        .expect("read mobilenet_v1_expected.json");
    let expected: serde_json::Value = serde_json::from_str(&text).expect("parse it");
    let cases = expected["cases"].as_array().expect("cases").clone();
    browser.open(&format!("http://{}/web/", server.addr));
    browser.run(DECODE, serde_json::json!([]));
    Some(Setup {
        browser,
        _server: server,
        cases,
        data,
        _dir: dir,
    })
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

#[test]
fn every_build_matches_tensorflow_and_litert_in_chromium() {
    let Some(t) = setup("every_build_matches_tensorflow_and_litert_in_chromium") else {
        return;
    };
    let variants = t.browser.run_async(
        "const m = await import('./mobilenet.js'); return m.supportedVariants();",
        serde_json::json!([]),
    );
    // Chromium runs all three builds (relaxed SIMD since version 114).
    assert_eq!(variants, serde_json::json!(["relaxed", "simd", "scalar"]));
    let float_cases: Vec<&serde_json::Value> = t
        .cases
        .iter()
        .filter(|c| c["model"] == FLOAT_MODEL)
        .collect();
    let quant_cases: Vec<&serde_json::Value> = t
        .cases
        .iter()
        .filter(|c| c["model"] == QUANT_MODEL)
        .collect();
    assert_eq!((float_cases.len(), quant_cases.len()), (6, 6));
    let png = |c: &serde_json::Value| {
        let path = t.data.join("reference").join(
            c["input"]
                .as_str()
                .expect("input")
                .trim_start_matches("reference/"),
        );
        base64(&std::fs::read(path).expect("a reference input"))
    };
    let float_pngs: Vec<String> = float_cases.iter().map(|c| png(c)).collect();
    let quant_pngs: Vec<String> = quant_cases.iter().map(|c| png(c)).collect();
    for variant in ["relaxed", "simd", "scalar"] {
        let got = t.browser.run_async(
            "const [variant, floatPngs, quantPngs] = arguments;
             const { load } = await import('./mobilenet.js');
             const f = await load('models/mobilenet_v1_1.0_224_imagenet_float', { variant, labels: './labels' });
             f.crop = 1; // the reference inputs are whole images at 224×224
             const logits = [];
             for (const b64 of floatPngs) logits.push(Array.from(await f.logits(await decodeImage(b64))));
             const top = await f.classify(await decodeImage(floatPngs[0]), { topK: 1 });
             const q = await load('models/mobilenet_v1_0.25_128_quant', { variant });
             q.crop = 1;
             const probs = [];
             for (const b64 of quantPngs) probs.push(Array.from(await q.probabilities(await decodeImage(b64))));
             const r = { variant: f.variant, isa: f.isa, qisa: q.isa, precision: q.precision, logits, probs, top };
             f.dispose(); q.dispose();
             return r;",
            serde_json::json!([variant, float_pngs, quant_pngs]),
        );
        assert!(got.get("rejected").is_none(), "{variant}: {got}");
        assert_eq!(got["variant"], variant);
        let isa = if variant == "scalar" {
            "scalar"
        } else {
            "wasm128"
        };
        assert_eq!(got["isa"], isa, "{variant}");
        assert_eq!(got["precision"], "uint8");
        for (case, logits) in float_cases
            .iter()
            .zip(got["logits"].as_array().expect("logits"))
        {
            let (ours, tf) = (floats(logits), floats(&case["logits"]));
            assert_eq!(ours.len(), tf.len());
            let worst = ours
                .iter()
                .zip(&tf)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= LOGIT_TOLERANCE,
                "{variant} {}: max |Δlogit| {worst:.2e}",
                case["input"]
            );
        }
        // cat_224: Egyptian cat (286), as TensorFlow says.
        assert_eq!(got["top"][0]["index"], 286, "{variant}: {}", got["top"]);
        assert_eq!(got["top"][0]["label"], "Egyptian cat");
        for (case, probs) in quant_cases
            .iter()
            .zip(got["probs"].as_array().expect("probs"))
        {
            let scale = case["output_scale"].as_f64().expect("scale");
            let want: Vec<f64> = floats(&case["output_uint8"])
                .iter()
                .map(|q| q * scale)
                .collect();
            let ours = floats(probs);
            let worst = ours
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst < 1e-6,
                "{variant} {}: int8 engine differs from LiteRT by {worst:.2e}",
                case["input"]
            );
        }
        eprintln!("{variant}: 6 float and 6 uint8 reference images match");
    }
}

#[test]
fn the_face_detector_finds_face_apis_faces_in_chromium() {
    let Some(t) = setup("the_face_detector_finds_face_apis_faces_in_chromium") else {
        return;
    };
    let reference = std::fs::read_to_string(
        t.data
            .join("detection/ssd_mobilenet_v1_face/reference_detections.json"),
    )
    .expect("reference detections");
    let reference: serde_json::Value = serde_json::from_str(&reference).expect("JSON");
    for (image, kind) in [
        ("images/face.jpg", "image/jpeg"),
        ("images/grace_hopper.png", "image/png"),
    ] {
        let bytes = std::fs::read(t.data.join(image)).expect("the image");
        let got = t.browser.run_async(
            "const [b64, type] = arguments;
             const { loadDetector } = await import('./mobilenet.js');
             const d = await loadDetector('models/face');
             const found = await d.detect(await decodeImage(b64, type), { minScore: 0.5 });
             const r = { found, precision: d.precision, resolution: d.resolution };
             d.dispose();
             return r;",
            serde_json::json!([base64(&bytes), kind]),
        );
        assert!(got.get("rejected").is_none(), "{image}: {got}");
        assert_eq!(got["precision"], "f32");
        let found = got["found"].as_array().expect("detections");
        let want = reference["images"][image].as_array().expect("reference");
        // face-api's boxes (tfjs CPU on PIL's decoding) within 1.5 pixels, scores within 0.01.
        assert_eq!(found.len(), want.len(), "{image}: {got}");
        for (f, w) in found.iter().zip(want) {
            assert_eq!(f["label"], "face");
            let score = f["score"].as_f64().expect("score");
            assert!(
                (score - w["score"].as_f64().expect("score")).abs() < 0.01,
                "{image}: {f} vs {w}"
            );
            for (a, b) in floats(&f["box"]).iter().zip(floats(&w["box"])) {
                assert!((a - b).abs() <= 1.5, "{image}: {f} vs {w}");
            }
        }
    }
}

#[test]
fn malformed_models_and_images_reject_and_the_page_goes_on() {
    let Some(t) = setup("malformed_models_and_images_reject_and_the_page_goes_on") else {
        return;
    };
    let model = std::fs::read(t.data.join(QUANT_MODEL)).expect("the model");
    let got = t.browser.run_async(
        "const [model] = arguments;
         const { load, loadDetector } = await import('./mobilenet.js');
         const bytes = Uint8Array.from(atob(model), c => c.charCodeAt(0));
         const reason = async f => { try { await f(); return 'resolved'; } catch (e) { return e.message; } };
         const out = {};
         out.junk = await reason(() => load(new Uint8Array([1, 2, 3, 4]), { name: 'junk.safetensors' }));
         out.truncated = await reason(() => load(bytes.slice(0, bytes.length >> 1), { name: 'cut.tflite' }));
         out.missing = await reason(() => load('models/nothing'));
         out.variant = await reason(() => load(bytes, { variant: 'avx' }));
         out.notDetector = await reason(() => loadDetector(bytes, { name: 'q.tflite' }));
         out.notClassifier = await reason(() => load('models/face'));
         const d = await loadDetector('models/face');
         out.minScore = await reason(() => d.detect(new ImageData(8, 8), { minScore: 2 }));
         out.labels = await reason(() => load(bytes, { name: 'q.tflite', labels: 'one\\ntwo\\n' }));
         const m = await load(bytes, { name: 'q.tflite' });
         out.short = await reason(() => m.classify({ data: new Uint8Array(10), width: 4, height: 4 }));
         out.empty = await reason(() => m.classify({ data: new Uint8Array(0), width: 0, height: 0 }));
         out.huge = await reason(() => m.classify({ data: new Uint8Array(4), width: 100000, height: 1 }));
         out.notImage = await reason(() => m.classify('cat.png'));
         out.crop = await reason(async () => { m.crop = 0; });
         out.logits = await reason(() => m.logits(new ImageData(8, 8)));
         // Still working after all of that.
         const img = new ImageData(128, 128);
         for (let i = 0; i < img.data.length; i++) img.data[i] = (i * 7) % 256;
         out.after = (await m.classify(img, { topK: 3 })).length;
         return out;",
        serde_json::json!([base64(&model)]),
    );
    let reason = |key: &str| got[key].as_str().unwrap_or("").to_string();
    assert!(
        reason("junk").contains("junk.safetensors"),
        "{}",
        reason("junk")
    );
    for (key, says) in [
        ("truncated", "cut.tflite"),
        ("missing", "HTTP 404"),
        ("variant", "expected relaxed, simd or scalar"),
        ("notDetector", "a .tflite classifier, not a detector"),
        ("notClassifier", "an SSD detector, not a classifier"),
        (
            "minScore",
            "minScore 2 is out of range: it must be in [0, 1]",
        ),
        ("labels", "2 labels for a model with 1001 classes"),
        ("short", "10 bytes for a 4×4 RGBA image (needs 64)"),
        ("empty", "each side must be 1 to 16384 pixels"),
        ("huge", "each side must be 1 to 16384 pixels"),
        ("notImage", "an image is ImageData"),
        ("crop", "crop 0: must be in (0, 1]"),
        ("logits", "an integer model outputs probabilities only"),
    ] {
        assert!(reason(key).contains(says), "{key}: {}", got[key]);
    }
    assert_eq!(got["after"], 3, "{got}");
}

#[test]
fn the_demo_page_classifies_a_picked_image_in_the_page() {
    let Some(t) = setup("the_demo_page_classifies_a_picked_image_in_the_page") else {
        return;
    };
    // The page loads the server's first classifier with the server's labels by itself.
    let loaded = t.browser.wait_for(
        "return document.getElementById('model-info').dataset.loaded || null;",
        Duration::from_secs(60),
    );
    assert_eq!(loaded, "mobilenet_v1_1.0_224_imagenet_float.safetensors");
    let image = t.data.join("images/grace_hopper.png");
    // What `mobilenet classify` says of it natively (the same crop and resize).
    let native = common::json_stdout(
        common::mobilenet()
            .args(["classify", "--json", "--top", "1", "--model"])
            .arg(t.data.join(FLOAT_MODEL))
            .arg("--labels")
            .arg(t.data.join("imagenet/imagenet_labels_1001.txt"))
            .arg(&image)
            .output()
            .expect("run classify"),
    );
    t.browser.pick_file("#image-file", &image);
    let shown = t.browser.wait_for(
        "const e = document.getElementById('top-label'); return e ? e.dataset.label : null;",
        Duration::from_secs(60),
    );
    assert_eq!(shown, native["top"][0]["label"], "{native}");
    let info = t.browser.run(
        "return document.getElementById('model-info').textContent;",
        serde_json::json!([]),
    );
    assert!(
        info.as_str().is_some_and(|i| i.contains("build relaxed")),
        "{info}"
    );
    t.browser.screenshot(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-page.png"),
        600,
    );
}
