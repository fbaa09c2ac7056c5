//! `mobilenet pick`: every α × resolution timed, the published accuracies joined, the frontier
//! and the best model under the budget, a user's own accuracies, the plot, and bad values.

mod common;

use common::{json_stdout, mobilenet};

#[test]
fn pick_times_the_grid_and_picks_under_the_budget() {
    let dir = std::env::temp_dir().join(format!("mobilenet-pick-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("should succeed");
    let png = dir.join("frontier.png");
    let out = mobilenet()
        .args(["pick", "--budget-ms", "100000", "--time-per-model", "0.01"])
        .args([
            "--alpha",
            "0.35",
            "--resolution",
            "96",
            "--threads",
            "1",
            "--json",
        ])
        .args(["--plot", png.to_str().expect("utf-8")])
        .output()
        .expect("should succeed");
    let v = json_stdout(out);
    let models = v["models"].as_array().expect("models");
    // 5 widths × 5 resolutions; the 16 released ones carry ImageNet's top-1.
    assert_eq!(models.len(), 25);
    let known = models.iter().filter(|m| m["accuracy"].is_number()).count();
    assert_eq!(known, 16);
    let get = |name: &str| {
        models
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(get("1.0_224")["accuracy"], 70.9);
    assert!(get("0.35_96")["accuracy"].is_null());
    assert!(get("0.5_160")["median_ms"].as_f64().expect("ms") > 0.0);
    // Everything fits a 100 s budget: the best is the most accurate, which is on the frontier.
    assert_eq!(v["best"]["name"], "1.0_224");
    assert_eq!(get("1.0_224")["frontier"], true);
    // The frontier's accuracy rises with its latency.
    let mut frontier: Vec<(f64, f64)> = models
        .iter()
        .filter(|m| m["frontier"] == true)
        .map(|m| {
            (
                m["median_ms"].as_f64().expect("ms"),
                m["accuracy"].as_f64().expect("accuracy"),
            )
        })
        .collect();
    frontier.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(frontier.windows(2).all(|w| w[1].1 > w[0].1), "{frontier:?}");
    let img = image::open(&png).expect("a PNG");
    assert_eq!((img.width(), img.height()), (1100, 700));

    // The user's accuracies replace ImageNet's.
    let acc = dir.join("acc.json");
    std::fs::write(&acc, r#"{"0.25_128": 91.5, "0.5_128": 90.0}"#).expect("should succeed");
    let out = mobilenet()
        .args([
            "pick",
            "--budget-ms",
            "100000",
            "--time-per-model",
            "0.01",
            "--json",
        ])
        .args(["--threads", "1", "--accuracy", acc.to_str().expect("utf-8")])
        .output()
        .expect("should succeed");
    let v = json_stdout(out);
    assert_eq!(v["best"]["name"], "0.25_128");
    assert_eq!(v["accuracy_source"], "user");

    // Bad values.
    std::fs::write(&acc, r#"{"0.25_128": 150}"#).expect("should succeed");
    for (args, says) in [
        (vec!["--budget-ms", "0"], "--budget-ms 0"),
        (
            vec![
                "--budget-ms",
                "5",
                "--accuracy",
                acc.to_str().expect("utf-8"),
            ],
            "not a percentage",
        ),
        (
            vec!["--budget-ms", "5", "--time-per-model", "0"],
            "--time-per-model",
        ),
        (
            vec!["--budget-ms", "5", "--precision", "bf16"],
            "no bf16 path",
        ),
    ] {
        let out = mobilenet()
            .arg("pick")
            .args(&args)
            .output()
            .expect("should succeed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
