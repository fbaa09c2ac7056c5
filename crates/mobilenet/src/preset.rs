//! The α × resolution names of MobileNets (`0.75_192`), the paper's grid of sixteen.

use std::fmt;
use std::str::FromStr;

use crate::config::MobileNetConfig;
use crate::error::ConfigError;

/// The four width multipliers of the paper (Table 6).
pub const PRESET_ALPHAS: [f64; 4] = [1.0, 0.75, 0.5, 0.25];
/// The four input resolutions of the paper (Table 7).
pub const PRESET_RESOLUTIONS: [usize; 4] = [224, 192, 160, 128];

/// A named α × resolution pair such as `"0.75_192"` (TF-slim's checkpoint naming).
///
/// Parsing accepts an optional `mobilenet_v1_` prefix and any valid α and resolution,
/// not only the paper's sixteen; [`Preset::paper_grid`] lists those.
///
/// ```
/// use mobilenet::Preset;
/// let p: Preset = "mobilenet_v1_0.50_160".parse().unwrap();
/// assert_eq!((p.alpha, p.resolution), (0.5, 160));
/// assert_eq!(p.to_string(), "0.5_160");
/// assert!("0.5-160".parse::<Preset>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preset {
    /// Width multiplier α.
    pub alpha: f64,
    /// Input height and width in pixels.
    pub resolution: usize,
}

impl Preset {
    /// The sixteen α ∈ {1, 0.75, 0.5, 0.25} × resolution ∈ {224, 192, 160, 128} models of the
    /// paper's Figures 4–5 (and of Google's released checkpoints), largest first.
    pub fn paper_grid() -> impl Iterator<Item = Preset> {
        PRESET_ALPHAS.into_iter().flat_map(|alpha| {
            PRESET_RESOLUTIONS
                .into_iter()
                .map(move |resolution| Preset { alpha, resolution })
        })
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", format_alpha(self.alpha), self.resolution)
    }
}

impl FromStr for Preset {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::Preset(s.to_string());
        let body = s.strip_prefix("mobilenet_v1_").unwrap_or(s);
        let (alpha, resolution) = body.split_once('_').ok_or_else(bad)?;
        let alpha: f64 = alpha.parse().map_err(|_| bad())?;
        let resolution: usize = resolution.parse().map_err(|_| bad())?;
        let preset = Preset { alpha, resolution };
        // Range errors name the preset, not just the number inside it.
        MobileNetConfig::from_preset(preset).map_err(|_| bad())?;
        Ok(preset)
    }
}

/// Formats α the way checkpoint names do: at least one decimal (`1.0`, `0.5`, `0.75`).
pub fn format_alpha(alpha: f64) -> String {
    if alpha.fract() == 0.0 {
        format!("{alpha:.1}")
    } else {
        format!("{alpha}")
    }
}
