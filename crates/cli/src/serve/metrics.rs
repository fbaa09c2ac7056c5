//! The server's counters, in Prometheus' text format at `GET /metrics`: requests by endpoint and
//! status, request latency and batch size histograms, queue depth per model.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets.
const LATENCY_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Upper bounds of the batch size histogram's buckets.
const BATCH_BOUNDS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths (atomic integer).
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micro
            .fetch_add((v * 1e6).round() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let wrap = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            wrap(labels),
            self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{} {count}", wrap(labels));
    }
}

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    /// `(endpoint, status) → count`.
    requests: Mutex<Vec<(String, u16, u64)>>,
    latency: Histogram,
    batches: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(Vec::new()),
            latency: Histogram::new(&LATENCY_BOUNDS),
            batches: Histogram::new(&BATCH_BOUNDS),
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, endpoint: &str, status: u16, took: Duration) {
        {
            let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            match r.iter_mut().find(|(e, s, _)| e == endpoint && *s == status) {
                Some(entry) => entry.2 += 1,
                None => r.push((endpoint.to_string(), status, 1)),
            }
        }
        self.latency.observe(took.as_secs_f64());
    }

    /// Counts one engine batch of `n` images.
    pub fn batch(&self, n: usize) {
        self.batches.observe(n as f64);
    }

    /// The text `/metrics` serves; `queues` is each model's name, queue depth and capacity.
    pub fn render(&self, queues: &[(String, usize, usize)]) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP mobilenet_requests_total Requests answered, by endpoint and HTTP status.\n",
        );
        out.push_str("# TYPE mobilenet_requests_total counter\n");
        {
            let mut r = self
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            r.sort();
            for (endpoint, status, n) in r {
                let _ = writeln!(
                    out,
                    "mobilenet_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP mobilenet_request_seconds Time from a request's arrival to its answer.\n",
        );
        out.push_str("# TYPE mobilenet_request_seconds histogram\n");
        self.latency
            .render(&mut out, "mobilenet_request_seconds", "");
        out.push_str("# HELP mobilenet_batch_size Images per engine batch.\n");
        out.push_str("# TYPE mobilenet_batch_size histogram\n");
        self.batches.render(&mut out, "mobilenet_batch_size", "");
        out.push_str("# HELP mobilenet_queue_depth Requests waiting for the engine, by model.\n");
        out.push_str("# TYPE mobilenet_queue_depth gauge\n");
        for (model, depth, _) in queues {
            let _ = writeln!(out, "mobilenet_queue_depth{{model=\"{model}\"}} {depth}");
        }
        out.push_str("# HELP mobilenet_queue_capacity Most requests a model's queue holds.\n");
        out.push_str("# TYPE mobilenet_queue_capacity gauge\n");
        for (model, _, capacity) in queues {
            let _ = writeln!(
                out,
                "mobilenet_queue_capacity{{model=\"{model}\"}} {capacity}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_requests_counted() {
        let m = Metrics::default();
        m.request("/v1/classify", 200, Duration::from_millis(3));
        m.request("/v1/classify", 200, Duration::from_millis(30));
        m.request("/v1/classify", 400, Duration::from_micros(10));
        m.batch(3);
        let text = m.render(&[("m".into(), 2, 64)]);
        assert!(
            text.contains("mobilenet_requests_total{endpoint=\"/v1/classify\",status=\"200\"} 2")
        );
        assert!(
            text.contains("mobilenet_requests_total{endpoint=\"/v1/classify\",status=\"400\"} 1")
        );
        // 10 µs ≤ 1 ms; 3 ms ≤ 5 ms; 30 ms ≤ 50 ms.
        assert!(
            text.contains("mobilenet_request_seconds_bucket{le=\"0.001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mobilenet_request_seconds_bucket{le=\"0.005\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mobilenet_request_seconds_bucket{le=\"0.05\"} 3"),
            "{text}"
        );
        assert!(text.contains("mobilenet_request_seconds_count 3"), "{text}");
        assert!(
            text.contains("mobilenet_batch_size_bucket{le=\"2\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("mobilenet_batch_size_bucket{le=\"4\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mobilenet_queue_depth{model=\"m\"} 2"),
            "{text}"
        );
    }
}
