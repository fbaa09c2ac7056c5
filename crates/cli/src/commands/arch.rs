//! `mobilenet arch`: the layer table with cost columns, as text or JSON, or the paper's tables.

use std::collections::BTreeMap;

use anyhow::Result;
use clap::Args;
use mobilenet::paper::{self, Quantity};
use mobilenet::{
    Activation, LayerCost, LayerKind, MobileNetConfig, ModelCost, Padding, Preset, Stem, Variant,
    DEFAULT_MIN_DEPTH, IMAGENET_CLASSES,
};
use serde::Serialize;

use crate::table::{thousands, Align, Table};

#[derive(Debug, Args)]
pub struct ArchArgs {
    /// Named α × resolution model, e.g. 1.0_224, 0.75_192, 0.5_160, 0.25_128
    #[arg(long, conflicts_with_all = ["alpha", "resolution"])]
    preset: Option<Preset>,
    /// Width multiplier α, in (0, 4]
    #[arg(long, allow_negative_numbers = true)]
    alpha: Option<f64>,
    /// Input height and width in pixels (at least 32)
    #[arg(long, allow_negative_numbers = true)]
    resolution: Option<usize>,
    /// Number of classes of the classifier (Google's TF checkpoints use 1001)
    #[arg(long, default_value_t = IMAGENET_CLASSES, allow_negative_numbers = true)]
    classes: usize,
    /// Leave out the classifier (average pool and FC): the body used as a backbone
    #[arg(long)]
    no_head: bool,
    /// standard, full-conv (the paper's Table 4) or shallow (Table 5)
    #[arg(long, default_value = "standard")]
    variant: Variant,
    /// Smallest channel count of any layer
    #[arg(long, default_value_t = DEFAULT_MIN_DEPTH)]
    min_depth: usize,
    /// relu or relu6
    #[arg(long, default_value = "relu6")]
    activation: Activation,
    /// tf-same or symmetric
    #[arg(long, default_value = "tf-same")]
    padding: Padding,
    /// standard (stride 2) or small-input (stride 1, for CIFAR-sized images)
    #[arg(long, default_value = "standard")]
    stem: Stem,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
    /// Print the paper's Tables 2–10 and 12 with our computed value beside each printed one
    #[arg(long, conflicts_with_all = ["preset", "alpha", "resolution", "json", "no_head"])]
    paper: bool,
    /// An SSD detector's layer table instead: ssd300 (COCO, the paper's Table 13) or face
    /// (face-api's 512×512 face detector)
    #[arg(long, value_name = "NAME", conflicts_with_all = ["preset", "alpha", "resolution", "no_head", "paper"])]
    detector: Option<String>,
}

impl ArchArgs {
    fn config(&self) -> Result<MobileNetConfig> {
        let preset = self.preset.unwrap_or(Preset {
            alpha: self.alpha.unwrap_or(1.0),
            resolution: self.resolution.unwrap_or(224),
        });
        let mut config = MobileNetConfig::from_preset(preset)?
            .with_classes(self.classes)?
            .with_min_depth(self.min_depth)?
            .with_variant(self.variant)
            .with_activation(self.activation)
            .with_padding(self.padding)
            .with_stem(self.stem);
        if self.no_head {
            config = config.without_head();
        }
        Ok(config)
    }
}

pub fn run(args: &ArchArgs) -> Result<()> {
    if args.paper {
        print!("{}", paper_report());
        return Ok(());
    }
    if let Some(name) = &args.detector {
        return super::arch_detector::run(name, args.json);
    }
    let config = args.config()?;
    let cost = ModelCost::of(&config);
    if args.json {
        println!("{}", serde_json::to_string(&ArchJson::new(&config, &cost))?);
    } else {
        print!("{}", text_report(&config, &cost));
    }
    Ok(())
}

/// The `--json` object.
#[derive(Serialize)]
struct ArchJson {
    alpha: f64,
    resolution: usize,
    classes: Option<usize>,
    variant: Variant,
    min_depth: usize,
    activation: Activation,
    padding: Padding,
    stem: Stem,
    mult_adds: u64,
    params: u64,
    bn_params: u64,
    by_type: BTreeMap<&'static str, KindJson>,
    layers: Vec<LayerJson>,
}

#[derive(Serialize)]
struct KindJson {
    mult_adds: u64,
    params: u64,
}

#[derive(Serialize)]
struct LayerJson {
    name: String,
    kind: LayerKind,
    stride: usize,
    input: [usize; 3],
    output: [usize; 3],
    mult_adds: u64,
    params: u64,
}

impl ArchJson {
    fn new(config: &MobileNetConfig, cost: &ModelCost) -> ArchJson {
        let by_type = LayerKind::WEIGHTED
            .into_iter()
            .map(|kind| {
                let c = cost.kind(kind);
                let json = KindJson {
                    mult_adds: c.mult_adds,
                    params: c.params(),
                };
                (kind.name(), json)
            })
            .collect();
        let layers = cost
            .layers
            .iter()
            .map(|(layer, c)| LayerJson {
                name: layer.name.clone(),
                kind: layer.kind,
                stride: layer.stride,
                input: layer.input,
                output: layer.output,
                mult_adds: c.mult_adds,
                params: c.params(),
            })
            .collect();
        ArchJson {
            alpha: config.alpha(),
            resolution: config.resolution(),
            classes: config.classes(),
            variant: config.variant(),
            min_depth: config.min_depth(),
            activation: config.activation(),
            padding: config.padding(),
            stem: config.stem(),
            mult_adds: cost.total.mult_adds,
            params: cost.total.params(),
            bn_params: cost.total.bn_params,
            by_type,
            layers,
        }
    }
}

fn hwc(shape: [usize; 3]) -> String {
    format!("{}×{}×{}", shape[0], shape[1], shape[2])
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.2}%", 100.0 * part as f64 / whole as f64)
    }
}

fn text_report(config: &MobileNetConfig, cost: &ModelCost) -> String {
    let mut out = format!("{config}\n\n");
    let mut table = Table::new(&[
        ("layer", Align::Left),
        ("type", Align::Left),
        ("stride", Align::Right),
        ("filter", Align::Left),
        ("input", Align::Right),
        ("output", Align::Right),
        ("Mult-Adds", Align::Right),
        ("params", Align::Right),
    ]);
    for (layer, c) in &cost.layers {
        table.row([
            layer.name.clone(),
            layer.kind.name().to_string(),
            format!("s{}", layer.stride),
            layer.filter_description(),
            hwc(layer.input),
            hwc(layer.output),
            thousands(c.mult_adds),
            thousands(c.params()),
        ]);
    }
    table.row([
        "total".to_string(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        thousands(cost.total.mult_adds),
        thousands(cost.total.params()),
    ]);
    out.push_str(&table.render());
    out.push_str(&format!(
        "\n{:.1} M Mult-Adds, {:.2} M parameters (weights + FC bias); \
         batch norm adds {} trainable parameters (γ, β) and as many moving statistics.\n",
        cost.total.mult_adds as f64 / 1e6,
        cost.total.params() as f64 / 1e6,
        thousands(cost.total.bn_params),
    ));

    // Shares of weights, as in the paper's Table 2 (which leaves the FC bias out).
    out.push_str("\nBy layer type (as the paper's Table 2: shares of Mult-Adds and of weights):\n");
    let mut by_type = Table::new(&[
        ("type", Align::Left),
        ("Mult-Adds", Align::Right),
        ("share", Align::Right),
        ("weights", Align::Right),
        ("share", Align::Right),
    ]);
    for kind in LayerKind::WEIGHTED {
        let c: LayerCost = cost.kind(kind);
        let label = match kind {
            LayerKind::Conv => "conv 3×3",
            LayerKind::Depthwise => "depthwise 3×3",
            LayerKind::Pointwise => "pointwise 1×1",
            LayerKind::Fc => "fully connected",
            LayerKind::AvgPool => "average pool",
        };
        by_type.row([
            label.to_string(),
            thousands(c.mult_adds),
            percent(c.mult_adds, cost.total.mult_adds),
            thousands(c.weights),
            percent(c.weights, cost.total.weights),
        ]);
    }
    out.push_str(&by_type.render());
    out.push_str(&format!("\nErratum: {}\n", paper::TABLE1_ERRATUM));
    out
}

fn paper_report() -> String {
    let mut out = String::from(
        "MobileNets (Howard et al. 2017): the paper's printed numbers next to ours.\n\
         Mult-Adds count conv, depthwise, pointwise and FC multiply-accumulates; parameters are\n\
         weights plus FC bias, without batch norm; 1000 classes unless the table says otherwise.\n\
         A printed value agrees (✓) when it is within one unit of its last digit of ours\n\
         (the paper rounds some values and truncates others).\n\n",
    );
    out.push_str(&format!(
        "Table 1 — MobileNet body architecture (`mobilenet arch` prints it with costs)\n  ✗ erratum: {}\n",
        paper::TABLE1_ERRATUM
    ));
    for table in paper::paper_tables() {
        out.push_str(&format!("\nTable {} — {}\n", table.number, table.title));
        let mut t = Table::new(&[
            ("  row", Align::Left),
            ("quantity", Align::Left),
            ("paper", Align::Right),
            ("ours", Align::Right),
            ("", Align::Left),
        ]);
        for cell in &table.cells {
            let decimals = match cell.quantity {
                Quantity::MultAdds if cell.computed >= 100.0 => 1,
                Quantity::MultAdds => 2,
                Quantity::Params => 3,
                Quantity::MultAddsShare | Quantity::ParamsShare => 2,
            };
            let mark = match cell.note {
                None => "✓".to_string(),
                Some(note) => format!("✗ {note}"),
            };
            t.row([
                format!("  {}", cell.row),
                cell.quantity.label().to_string(),
                cell.printed.to_string(),
                format!("{:.*}", decimals, cell.computed),
                mark,
            ]);
        }
        out.push_str(&t.render());
    }
    out.push_str(
        "\nOther errata of the paper (tables whose numbers do not follow from the architecture):\n\
         - Table 11: \"0.58 Million mult-adds\" for PlaNet MobileNet should read 0.58 billion.\n\
         - Table 12: the baseline's 7.5 M parameters contradict the text's \"75 million\".\n\
         - Table 14: two rows are labelled \"0.75 MobileNet-128\"; by Mult-Adds the 166 M row is 0.75-160.\n",
    );
    out
}
