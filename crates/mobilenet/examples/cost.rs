//! Build a MobileNet configuration and print its cost, layer by layer.
//!
//! `cargo run -p mobilenet --example cost -- 0.5_160`

use mobilenet::{MobileNetConfig, ModelCost, Preset};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let preset: Preset = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "1.0_224".to_string())
        .parse()?;
    let config = MobileNetConfig::from_preset(preset)?;
    let cost = ModelCost::of(&config);
    println!("{config}");
    for (layer, c) in &cost.layers {
        println!(
            "{:<18} {:>14} → {:<14} {:>12} Mult-Adds {:>10} params",
            layer.name,
            format!("{:?}", layer.input),
            format!("{:?}", layer.output),
            c.mult_adds,
            c.params()
        );
    }
    println!(
        "total: {:.1} M Mult-Adds, {:.2} M parameters",
        cost.total.mult_adds as f64 / 1e6,
        cost.total.params() as f64 / 1e6
    );
    Ok(())
}
