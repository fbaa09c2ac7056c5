//! `mobilenet arch --detector NAME`: an SSD detector's layers with shapes and costs.

use anyhow::Result;
use mobilenet::detect::{CostRow, DetectorConfig, COCO_LOGITS};
use serde::Serialize;

use crate::table::{thousands, Align, Table};

/// The detectors `--detector` knows.
pub const DETECTORS: &str = "ssd300, face";

/// The named detector's configuration.
pub fn named(name: &str) -> Result<DetectorConfig> {
    match name {
        "ssd300" => Ok(DetectorConfig::ssd300(COCO_LOGITS, coco_labels())),
        "face" => Ok(DetectorConfig::face_api()),
        other => anyhow::bail!("unknown detector {other:?} (expected one of: {DETECTORS})"),
    }
}

/// Placeholder names for the Object Detection API's 90 COCO ids (the label map is not needed
/// for costs; a trained detector carries its own labels).
fn coco_labels() -> Vec<String> {
    (1..COCO_LOGITS).map(|id| format!("coco_{id}")).collect()
}

#[derive(Serialize)]
struct DetectorJson<'a> {
    detector: &'a DetectorConfig,
    anchors: usize,
    mult_adds: u64,
    params: u64,
    bn_params: u64,
    layers: &'a [CostRow],
}

/// Prints the report (or JSON) for the named detector.
pub fn run(name: &str, json: bool) -> Result<()> {
    let config = named(name)?;
    let (rows, total) = config.cost()?;
    let anchors: usize = config
        .map_shapes()?
        .iter()
        .enumerate()
        .map(|(m, s)| s[0] * s[1] * config.anchors.boxes_per_position(m))
        .sum();
    if json {
        let out = DetectorJson {
            detector: &config,
            anchors,
            mult_adds: total.mult_adds,
            params: total.params(),
            bn_params: total.bn_params,
            layers: &rows,
        };
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let hwc = |s: [usize; 3]| format!("{}×{}×{}", s[0], s[1], s[2]);
    println!(
        "{}: SSD with a MobileNet v1 α {} backbone, {}×{} input, {} feature maps, {} anchors, \
         {} logits per anchor (background included)\n",
        config.name,
        mobilenet::format_alpha(config.alpha),
        config.input,
        config.input,
        config.maps_count(),
        thousands(anchors as u64),
        config.classes
    );
    let maps = config.map_layers();
    let mut table = Table::new(&[
        ("layer", Align::Left),
        ("input", Align::Right),
        ("output", Align::Right),
        ("Mult-Adds", Align::Right),
        ("params", Align::Right),
        ("", Align::Left),
    ]);
    for row in &rows {
        let note = if maps.contains(&row.name) {
            "→ feature map"
        } else {
            ""
        };
        table.row([
            row.name.clone(),
            hwc(row.input),
            hwc(row.output),
            thousands(row.cost.mult_adds),
            thousands(row.cost.params()),
            note.to_string(),
        ]);
    }
    table.row([
        "total".to_string(),
        String::new(),
        String::new(),
        thousands(total.mult_adds),
        thousands(total.params()),
        String::new(),
    ]);
    print!("{}", table.render());
    println!(
        "\n{:.3} B Mult-Adds, {:.2} M parameters. Counted: the weights of every convolution \
         (body, extra layers) and the box and class predictors' weights and biases \
         (head_<m>: both predictors of map m, one 1×1 convolution each). Not counted: batch \
         norm ({} trainable γ, β), anchors (computed, not learned), decoding and NMS.",
        total.mult_adds as f64 / 1e9,
        total.params() as f64 / 1e6,
        thousands(total.bn_params),
    );
    if config.name == "ssd300" {
        println!(
            "The paper's Table 13 (SSD 300, MobileNet, COCO): 1.2 billion Mult-Adds, 6.8 million \
             parameters, 19.3% mAP."
        );
    }
    Ok(())
}
