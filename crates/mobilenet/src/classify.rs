//! From probabilities to ranked, labelled predictions.

use serde::Serialize;

/// One ranked class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// Index in the model's output.
    pub class: usize,
    /// The class label, or `"class <index>"` when the model has no labels.
    pub label: String,
    /// Softmax probability.
    pub probability: f32,
}

/// The `k` most probable classes, most probable first (ties keep the lower index first;
/// NaN probabilities rank last).
pub fn top_k(probabilities: &[f32], k: usize, labels: Option<&[String]>) -> Vec<Prediction> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (probabilities[a], probabilities[b]);
        pb.partial_cmp(&pa)
            .unwrap_or_else(|| pa.is_nan().cmp(&pb.is_nan()))
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(k)
        .map(|class| Prediction {
            class,
            label: labels
                .and_then(|l| l.get(class).cloned())
                .unwrap_or_else(|| format!("class {class}")),
            probability: probabilities[class],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_labels() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let top = top_k(&[0.2, 0.5, 0.3], 2, Some(&labels));
        assert_eq!(top[0].class, 1);
        assert_eq!(top[0].label, "b");
        assert_eq!(top[1].class, 2);
        let top = top_k(&[f32::NAN, 0.1, 0.1], 3, None);
        assert_eq!(top.iter().map(|p| p.class).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(top[0].label, "class 1");
    }
}
