//! Held-out splits: a count drawn from the whole set, or a percentage of every class.

use super::Dataset;
use crate::Rng;

/// How many images a split holds out of a data set.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Holdout {
    /// This many images, drawn at random from the whole set.
    Count(usize),
    /// This percentage of every class, drawn class by class (stratified).
    Percent {
        /// Percentage in (0, 100).
        percent: f32,
    },
}

impl std::str::FromStr for Holdout {
    type Err = String;

    /// `1000` (images) or `10%` (of every class).
    fn from_str(s: &str) -> Result<Holdout, String> {
        match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<f32>() {
                Ok(percent) if percent > 0.0 && percent < 100.0 => Ok(Holdout::Percent { percent }),
                _ => Err(format!("{s}: a percentage must be between 0% and 100%")),
            },
            None => s
                .trim()
                .parse()
                .map(Holdout::Count)
                .map_err(|_| format!("{s}: give a number of images or a percentage (10%)")),
        }
    }
}

impl std::fmt::Display for Holdout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holdout::Count(n) => write!(f, "{n}"),
            Holdout::Percent { percent } => write!(f, "{percent}%"),
        }
    }
}

impl Dataset {
    /// A seeded split into (train, held-out) as `holdout` says: a count is drawn from the
    /// whole set ([`Dataset::split`]), a percentage from every class.
    pub fn split_by(&self, holdout: Holdout, seed: u64) -> (Dataset, Dataset) {
        let percent = match holdout {
            Holdout::Count(n) => return self.split(n, seed),
            Holdout::Percent { percent } => percent,
        };
        let mut by_class = vec![Vec::new(); self.classes.len()];
        for i in 0..self.len() {
            by_class[self.label(i)].push(i);
        }
        let (mut train, mut held_out) = (Vec::new(), Vec::new());
        for (c, mut members) in by_class.into_iter().enumerate() {
            shuffle(
                &mut members,
                &mut Rng::new(seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            );
            let n = members.len();
            // At least one image of every class with two or more is held out.
            let k = ((n as f32 * percent / 100.0).round() as usize).clamp(usize::from(n >= 2), n);
            held_out.extend_from_slice(&members[..k]);
            train.extend_from_slice(&members[k..]);
        }
        train.sort_unstable();
        held_out.sort_unstable();
        (self.subset(&train), self.subset(&held_out))
    }
}

/// Fisher–Yates shuffle.
pub fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percentage_is_held_out_of_every_class() {
        let d = Dataset::builtin_fashion_mnist().subset(&(0..2000).collect::<Vec<_>>());
        let holdout: Holdout = "10%".parse().expect("10%");
        let (train, val) = d.split_by(holdout, 3);
        assert_eq!(train.len() + val.len(), 2000);
        let count = |s: &Dataset, c: usize| (0..s.len()).filter(|&i| s.label(i) == c).count();
        for c in 0..10 {
            let all = count(&d, c);
            assert_eq!(
                count(&val, c),
                (all as f32 * 0.1).round() as usize,
                "class {c}"
            );
        }
        assert_eq!(d.split_by(holdout, 3).1.indices, val.indices, "seeded");
        assert_ne!(d.split_by(holdout, 4).1.indices, val.indices);
        assert_eq!("250".parse::<Holdout>(), Ok(Holdout::Count(250)));
        for bad in ["0%", "100%", "x", "-3"] {
            assert!(bad.parse::<Holdout>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&holdout).expect("json");
        assert_eq!(serde_json::from_str::<Holdout>(&json).ok(), Some(holdout));
        assert_eq!(
            serde_json::from_str::<Holdout>("1000").ok(),
            Some(Holdout::Count(1000))
        );
    }
}
