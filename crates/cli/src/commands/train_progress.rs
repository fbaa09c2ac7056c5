//! What `mobilenet train` shows while it runs: a progress bar per epoch, a line per epoch, the
//! curves PNG, and each skipped image named once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use mobilenet::train::profile::{TrainOp, TrainProfile};
use mobilenet::train::trainer::{EpochMetrics, Progress};

use crate::plot;
use crate::table::{Align, Table};

pub(super) struct Bars {
    pub(super) bar: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
    dir: PathBuf,
    title: String,
    /// Skipped images already named.
    named: HashSet<String>,
    /// Classes of the data.
    classes: usize,
}

impl Bars {
    pub(super) fn new(stop: Arc<AtomicBool>, dir: PathBuf, title: String, classes: usize) -> Bars {
        Bars {
            bar: None,
            stop,
            dir,
            title,
            named: HashSet::new(),
            classes,
        }
    }
}

impl Progress for Bars {
    fn step(
        &mut self,
        epoch: usize,
        batch: usize,
        batches: usize,
        loss: f32,
        accuracy: f32,
        ips: f32,
    ) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(batches as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix:>3} {bar:30} {pos}/{len} {msg} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix((epoch + 1).to_string());
            bar
        });
        bar.set_position(batch as u64 + 1);
        bar.set_message(format!(
            "loss {loss:.4} acc {:.1}% {} img/s",
            100.0 * accuracy,
            rate(f64::from(ips))
        ));
    }

    fn epoch(&mut self, m: &EpochMetrics, history: &[EpochMetrics]) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        // Top-5 says nothing with five classes or fewer.
        let top5 = match self.classes {
            0..=5 => String::new(),
            _ => format!(" (top-5 {:5.1}%)", 100.0 * m.val_top5),
        };
        let skipped = match m.skipped_images {
            0 => String::new(),
            n => format!("  ({} skipped)", super::train::plural(n, "image")),
        };
        println!(
            "epoch {:>3}  train loss {:.4} acc {:5.1}%  held-out loss {:.4} acc {:5.1}%{top5}  lr {:.2e}  {} img/s  {:.1}s{skipped}",
            m.epoch,
            m.train_loss,
            100.0 * m.train_accuracy,
            m.val_loss,
            100.0 * m.val_accuracy,
            m.lr,
            rate(f64::from(m.images_per_second)),
            m.seconds,
        );
        let png = self.dir.join("curves.png");
        if let Err(e) = plot::training_curves(&png, history, &self.title) {
            eprintln!("warning: could not draw {}: {e:#}", png.display());
        }
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn skipped(&mut self, message: &str) {
        if self.named.insert(message.to_string()) {
            let line = || eprintln!("warning: skipped {message}");
            match &self.bar {
                Some(bar) => bar.suspend(line),
                None => line(),
            }
        }
    }
}

/// `--profile`'s table: seconds, share and milliseconds per step of each operation, then the
/// images per second of the steps.
pub(super) fn profile_table(p: &TrainProfile) -> String {
    let total = p.total().max(1e-12);
    let mut table = Table::new(&[
        ("operation", Align::Left),
        ("seconds", Align::Right),
        ("share", Align::Right),
        ("ms/step", Align::Right),
    ]);
    for op in TrainOp::ALL {
        let s = p.get(op);
        if s > 0.0 {
            table.row([
                op.name().to_string(),
                format!("{s:.2}"),
                format!("{:.1}%", 100.0 * s / total),
                format!("{:.2}", 1e3 * s / p.steps.max(1) as f64),
            ]);
        }
    }
    let steps = total - p.get(TrainOp::Evaluation);
    format!(
        "time per operation over {} steps of {} images:\n{}(batch norm's backward passes run inside the convolutions' rows: the sums in the layer above's, the apply in its own)\n{} training images/s over the steps (data wait included, evaluation not)\n",
        p.steps,
        p.images,
        table.render(),
        rate(p.images as f64 / steps.max(1e-12))
    )
}

/// Images per second to three significant digits (1.0-224 trains at 15.1, not "15").
fn rate(x: f64) -> String {
    match x {
        x if x < 10.0 => format!("{x:.2}"),
        x if x < 100.0 => format!("{x:.1}"),
        x => format!("{x:.0}"),
    }
}
