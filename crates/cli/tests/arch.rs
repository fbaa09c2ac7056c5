//! `mobilenet arch` as a user runs it: JSON shape and values, the paper report, bad arguments.

use std::process::{Command, Output};

fn mobilenet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mobilenet"))
        .args(args)
        .output()
        .expect("run mobilenet")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = mobilenet(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn json_for_the_default_model() {
    let v = json(&["arch", "--json"]);
    assert_eq!(v["alpha"], 1.0);
    assert_eq!(v["resolution"], 224);
    assert_eq!(v["classes"], 1000);
    assert_eq!(v["variant"], "standard");
    assert_eq!(v["mult_adds"], 568_740_352u64);
    assert_eq!(v["params"], 4_210_088u64);
    assert_eq!(v["bn_params"], 21_888);
    assert_eq!(v["by_type"]["pointwise"]["mult_adds"], 539_492_352u64);
    assert_eq!(v["by_type"]["fc"]["params"], 1_025_000);
    let layers = v["layers"].as_array().expect("layers array");
    assert_eq!(layers.len(), 29);
    assert_eq!(layers[0]["name"], "conv_0");
    assert_eq!(layers[0]["kind"], "conv");
    assert_eq!(layers[0]["stride"], 2);
    assert_eq!(layers[0]["input"], serde_json::json!([224, 224, 3]));
    assert_eq!(layers[0]["output"], serde_json::json!([112, 112, 32]));
    assert_eq!(layers[0]["mult_adds"], 10_838_016);
    assert_eq!(layers[27]["kind"], "avgpool");
    assert_eq!(layers[28]["kind"], "fc");
    let sum: u64 = layers
        .iter()
        .map(|l| l["mult_adds"].as_u64().expect("int"))
        .sum();
    assert_eq!(sum, 568_740_352);
}

#[test]
fn json_for_presets_and_variants() {
    let v = json(&["arch", "--json", "--preset", "0.5_160"]);
    assert_eq!(v["mult_adds"], 76_524_800);
    let v = json(&[
        "arch",
        "--json",
        "--alpha",
        "0.5",
        "--resolution",
        "160",
        "--classes",
        "1001",
    ]);
    assert_eq!(v["classes"], 1001);
    let v = json(&["arch", "--json", "--variant", "full-conv"]);
    assert_eq!(v["variant"], "full-conv");
    assert_eq!(v["by_type"]["depthwise"]["mult_adds"], 0);
    assert_eq!(v["mult_adds"], 4_867_293_184u64);
    let v = json(&["arch", "--json", "--variant", "shallow"]);
    assert_eq!(v["layers"].as_array().expect("layers").len(), 19);
    let v = json(&["arch", "--json", "--no-head"]);
    assert_eq!(v["classes"], serde_json::Value::Null);
    assert_eq!(v["mult_adds"], 567_716_352);
}

#[test]
fn text_table_and_paper_report() {
    let out = mobilenet(&["arch", "--preset", "0.75_192"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.starts_with("MobileNet v1 0.75_192, 1000 classes"),
        "{text}"
    );
    assert!(text.contains("conv_13/pointwise"));
    assert!(text.contains("239,273,472"), "total Mult-Adds of 0.75-192");

    let out = mobilenet(&["arch", "--paper"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    for table in [2, 3, 4, 5, 6, 7, 8, 9, 10, 12] {
        assert!(
            text.contains(&format!("Table {table} —")),
            "Table {table} missing"
        );
    }
    assert!(text.contains("erratum: a digit transposition of 1.91%"));
}

#[test]
fn bad_arguments_give_one_line_naming_the_value() {
    let cases: [(&[&str], &str); 8] = [
        (&["arch", "--alpha", "0"], "0"),
        (&["arch", "--alpha", "-0.5"], "-0.5"),
        (&["arch", "--alpha", "4.5"], "4.5"),
        (&["arch", "--resolution", "31"], "31"),
        (&["arch", "--resolution", "-224"], "-224"),
        (&["arch", "--preset", "0.6_foo"], "0.6_foo"),
        (&["arch", "--preset", "2_16"], "2_16"),
        (&["arch", "--classes", "0"], "0"),
    ];
    for (args, value) in cases {
        let out = mobilenet(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8(out.stderr).expect("utf-8");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(value),
            "{args:?} should name {value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

/// `arch --detector ssd300` prints the paper's Table 13 model: 1.2 B Mult-Adds, 6.8 M
/// parameters (1,237,129,408 and 6,794,495 counted), with its 1,917 anchors.
#[test]
fn detector_table_reproduces_table_13() {
    let json = json(&["arch", "--detector", "ssd300", "--json"]);
    assert_eq!(json["mult_adds"], 1_237_129_408u64);
    assert_eq!(json["params"], 6_794_495u64);
    assert_eq!(json["anchors"], 1917);
    let text = mobilenet(&["arch", "--detector", "ssd300"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("1.237 B Mult-Adds, 6.79 M parameters"),
        "{text}"
    );
    let bad = mobilenet(&["arch", "--detector", "yolo"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected one of: ssd300, face"));
}
