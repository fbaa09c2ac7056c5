//! Importing timm's MobileNet v1 state dicts (`conv_stem.weight`, `blocks.S.I.conv_dw.weight`,
//! …, OIHW, BN ε 1e-5, symmetric padding, ReLU6).
//!
//! `fixtures/timm_mobilenetv1.json` comes from `scripts/timm_fixture.py`: a timm
//! `mobilenetv1` at α 0.25 with 10 classes whose every tensor is filled by a formula both sides
//! compute bit for bit, and PyTorch's logits for a fixed 96×96 input. The test rebuilds that
//! state dict from the fixture's own list of names and shapes (PyTorch's, not ours), saves it
//! as safetensors the way `safetensors.torch.save_file` does (num_batches_tracked included),
//! imports it and must give PyTorch's logits within 1e-4. Where the peer environment is here,
//! the file timm itself saves is imported too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mobilenet::import::{import, ImportOptions, SourceFormat};
use mobilenet::preprocess::{PixelNorm, Preprocessing};
use mobilenet::{InferenceModel, ModelFile, Padding};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const FIXTURE: &str = include_str!("fixtures/timm_mobilenetv1.json");

struct Entry {
    name: String,
    shape: Vec<usize>,
    /// f32 values, or `None` for an int64 tensor (num_batches_tracked).
    values: Option<Vec<f32>>,
}

fn fixture() -> serde_json::Value {
    serde_json::from_str(FIXTURE).expect("the fixture is JSON")
}

/// The state dict the script filled, in its order.
fn state_dict() -> Vec<Entry> {
    let f = fixture();
    let list = f["tensors"].as_array().expect("tensors");
    list.iter()
        .enumerate()
        .map(|(t, e)| {
            let shape: Vec<usize> = e["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dimension") as usize)
                .collect();
            let n: usize = shape.iter().product();
            let (offset, scale) = (
                e["offset"].as_f64().expect("offset"),
                e["scale"].as_f64().expect("scale"),
            );
            let values = (e["dtype"] == "float32").then(|| {
                (0..n as u64)
                    .map(|i| {
                        let u = (((i + 1) * 7919 + (t as u64 + 1) * 104_729) % 2001) as f64
                            / 1000.0
                            - 1.0;
                        (offset + scale * u) as f32
                    })
                    .collect()
            });
            assert!(values.is_some() || e["dtype"] == "int64", "{e}");
            Entry {
                name: e["name"].as_str().expect("name").to_string(),
                shape,
                values,
            }
        })
        .collect()
}

/// The state dict as safetensors, each float tensor in `dtype` (F32, F16 or BF16).
fn safetensors_bytes(entries: &[Entry], dtype: Dtype) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = entries
        .iter()
        .map(|e| match &e.values {
            None => (
                e.name.clone(),
                e.shape.clone(),
                Dtype::I64,
                0i64.to_le_bytes().repeat(e.shape.iter().product()),
            ),
            Some(v) => {
                let data = match dtype {
                    Dtype::F16 => v
                        .iter()
                        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                        .collect(),
                    Dtype::BF16 => v
                        .iter()
                        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                        .collect(),
                    _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                };
                (e.name.clone(), e.shape.clone(), dtype, data)
            }
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, d, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize(views, Some(meta)).expect("serialises")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mobilenet-timm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn import_bytes(bytes: &[u8], name: &str) -> Result<(ModelFile, SourceFormat), String> {
    let options = ImportOptions {
        resolution: Some(96),
        ..Default::default()
    };
    mobilenet::import::import_bytes(bytes, Path::new(name), &options).map_err(|e| e.to_string())
}

/// Our logits on the fixture's input, and the largest difference from PyTorch's.
fn worst_difference(file: &ModelFile) -> f32 {
    let m = InferenceModel::new(file).expect("should succeed");
    let x: Vec<f32> = (0..m.input_len())
        .map(|i| ((i * 7919) % 256) as f32 / 127.5 - 1.0)
        .collect();
    let ours = m.session(1, 1).run(&x).to_vec();
    let torch = common_f32s(&fixture()["logits"]);
    assert_eq!(ours.len(), torch.len());
    ours.iter()
        .zip(&torch)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn common_f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

#[test]
fn a_seeded_timm_state_dict_imports_with_pytorchs_logits() {
    let (file, format) = import_bytes(
        &safetensors_bytes(&state_dict(), Dtype::F32),
        "timm.safetensors",
    )
    .expect("imports");
    assert_eq!(format, SourceFormat::Timm);
    let c = &file.config;
    assert_eq!(
        (c.alpha(), c.resolution(), c.classes()),
        (0.25, 96, Some(10))
    );
    assert_eq!(c.padding(), Padding::Symmetric);
    assert_eq!(file.bn_epsilon, 1e-5);
    assert_eq!(file.preprocessing.norm, PixelNorm::MinusOneToOne);
    let worst = worst_difference(&file);
    eprintln!("max |Δlogit| against PyTorch: {worst:.2e}");
    assert!(worst <= 1e-4, "max |Δlogit| against PyTorch {worst:.2e}");
    // The fixture tells paddings apart: TF's SAME (Google's checkpoints) is far off.
    let mut tf_same = file.clone();
    tf_same.config = tf_same.config.with_padding(Padding::TfSame);
    let off = worst_difference(&tf_same);
    assert!(off > 1e-2, "TF-SAME padding is only {off:.2e} off");
}

#[test]
fn half_precision_state_dicts_widen_exactly() {
    let entries = state_dict();
    let (f32_file, _) =
        import_bytes(&safetensors_bytes(&entries, Dtype::F32), "a.safetensors").expect("f32");
    for (dtype, round) in [
        (
            Dtype::F16,
            (|x: f32| half::f16::from_f32(x).to_f32()) as fn(f32) -> f32,
        ),
        (Dtype::BF16, |x: f32| half::bf16::from_f32(x).to_f32()),
    ] {
        let (file, _) =
            import_bytes(&safetensors_bytes(&entries, dtype), "h.safetensors").expect("imports");
        for (name, t) in file.tensors() {
            let want: Vec<f32> = f32_file.tensors()[name]
                .data
                .iter()
                .map(|&x| round(x))
                .collect();
            assert_eq!(t.data, want, "{dtype:?} {name}");
        }
    }
}

#[test]
fn preprocessing_can_be_given_for_models_trained_with_imagenets_mean_and_std() {
    let imagenet = Preprocessing {
        crop: 0.95,
        norm: PixelNorm::MeanStd {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        },
    };
    let options = ImportOptions {
        norm: Some(imagenet.norm),
        crop: Some(imagenet.crop),
        ..Default::default()
    };
    let bytes = safetensors_bytes(&state_dict(), Dtype::F32);
    let (file, _) = mobilenet::import::import_bytes(&bytes, Path::new("t.safetensors"), &options)
        .expect("imports");
    assert_eq!(file.preprocessing, imagenet);
}

/// The state dict with `edit` applied, imported; its error message.
fn refused(edit: impl FnOnce(&mut Vec<Entry>)) -> String {
    let mut entries = state_dict();
    edit(&mut entries);
    import_bytes(&safetensors_bytes(&entries, Dtype::F32), "bad.safetensors").expect_err("refused")
}

#[test]
fn broken_and_foreign_state_dicts_are_refused_naming_the_tensor() {
    let err = refused(|e| e.retain(|t| t.name != "blocks.3.4.bn2.running_var"));
    assert!(err.contains("blocks.3.4.bn2.running_var"), "{err}");

    // A depthwise kernel saved as a dense 3×3 convolution's: the shape PyTorch should hold is
    // the one named.
    let err = refused(|e| {
        let t = e
            .iter_mut()
            .find(|t| t.name == "blocks.1.0.conv_dw.weight")
            .expect("there");
        t.shape = vec![2, 8, 3, 3];
    });
    assert!(
        err.contains("blocks.1.0.conv_dw.weight") && err.contains("[16, 1, 3, 3]"),
        "{err}"
    );

    let err = refused(|e| {
        e.push(Entry {
            name: "conv_head.weight".into(),
            shape: vec![1024, 256, 1, 1],
            values: Some(vec![0.0; 1024 * 256]),
        })
    });
    assert!(
        err.contains("conv_head.weight") && err.contains("not of MobileNet v1"),
        "{err}"
    );

    let err = refused(|e| {
        e.push(Entry {
            name: "blocks.1.0.conv_pwl.weight".into(),
            shape: vec![16, 16, 1, 1],
            values: Some(vec![0.0; 256]),
        })
    });
    assert!(err.contains("inverted residual"), "{err}");

    let err = refused(|e| {
        e.push(Entry {
            name: "blocks.4.2.conv_dw.weight".into(),
            shape: vec![256, 1, 3, 3],
            values: Some(vec![0.0; 256 * 9]),
        })
    });
    assert!(err.contains("blocks.4.2.conv_dw.weight"), "{err}");

    // A tensor of another dtype is named, int64 included where it is not the BN counter.
    let mut entries = state_dict();
    entries.retain(|t| t.name != "classifier.bias");
    entries.push(Entry {
        name: "classifier.bias".into(),
        shape: vec![10],
        values: None,
    });
    let err = import_bytes(&safetensors_bytes(&entries, Dtype::F32), "i.safetensors")
        .expect_err("refused");
    assert!(err.contains("\"classifier.bias\" has dtype I64"), "{err}");
}

/// The peer environment's python with timm, if it is here.
fn peers_python() -> Option<PathBuf> {
    std::env::var_os("MOBILENET_PEERS_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".cache/mobilenet-peers/peers/.venv/bin/python"))
        })
        .filter(|p| p.is_file())
}

#[test]
fn the_file_timm_saves_imports_with_pytorchs_logits() {
    let Some(python) = peers_python() else {
        eprintln!("skipping: no peer environment with timm here (../shared/bench/peers)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/timm_fixture.py");
    let out = temp("saved_by_timm.safetensors");
    let status = std::process::Command::new(python)
        .arg(&script)
        .arg("--save")
        .arg(&out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("runs python");
    if !status.success() {
        eprintln!("skipping: the peer environment's python could not run timm ({status})");
        return;
    }
    let options = ImportOptions {
        resolution: Some(96),
        ..Default::default()
    };
    let imported = import(&out, &options);
    std::fs::remove_dir_all(out.parent().expect("a folder")).expect("should succeed");
    let (file, format) = imported.expect("imports");
    assert_eq!(format, SourceFormat::Timm);
    let worst = worst_difference(&file);
    assert!(worst <= 1e-4, "max |Δlogit| against PyTorch {worst:.2e}");
    let names: BTreeMap<_, _> = file
        .tensors()
        .iter()
        .map(|(n, t)| (n.clone(), t.shape.clone()))
        .collect();
    assert_eq!(
        names.len(),
        27 * 5 + 2,
        "a weight and four BN tensors per layer, and the classifier"
    );
    let _ = std::fs::remove_file(&out);
}
