//! Training metrics over a log interval: mean loss, accuracy or bits per byte, and
//! tokens per second, as one record of `metrics.jsonl` and one progress message.

use std::time::Instant;

use serde_json::json;

/// Training figures accumulated between log lines.
#[derive(Default)]
pub struct MetricsWindow {
    nll: f64,
    correct: f64,
    weight: f64,
    tokens: i64,
    pub total_tokens: i64,
    started: Option<Instant>,
}

impl MetricsWindow {
    /// Marks the start of a step: a window's time runs from its first step's start.
    pub fn begin_step(&mut self) {
        self.started.get_or_insert_with(Instant::now);
    }

    pub fn add(&mut self, nll: f64, correct: f64, weight: f64, tokens: i64) {
        self.nll += nll;
        self.correct += correct;
        self.weight += weight;
        self.tokens += tokens;
        self.total_tokens += tokens;
    }

    /// The window's record, and a new window. A window of skipped steps only has no loss
    /// (null).
    pub fn flush(&mut self, step: i64, lr: f64, elapsed: f64, bpc: bool) -> serde_json::Value {
        let per_target = |sum: f64| if self.weight > 0.0 { sum / self.weight.max(1.0) } else { f64::NAN };
        let loss = per_target(self.nll);
        let secs = self.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0).max(1e-9);
        let mut record = json!({"step": step, "loss": loss, "lr": lr, "tokens_per_sec": self.tokens as f64 / secs, "elapsed": elapsed});
        if bpc {
            record["bpc"] = json!(loss / std::f64::consts::LN_2);
        } else {
            record["accuracy"] = json!(per_target(self.correct));
        }
        let total = self.total_tokens;
        *self = Self { total_tokens: total, ..Default::default() };
        record
    }
}

pub fn window_message(record: &serde_json::Value) -> String {
    let figure = match (record.get("bpc"), record.get("accuracy")) {
        (Some(bpc), _) => format!("bpc {:.3}", bpc.as_f64().unwrap_or(f64::NAN)),
        (_, Some(acc)) => format!("acc {:.1}%", 100.0 * acc.as_f64().unwrap_or(f64::NAN)),
        _ => String::new(),
    };
    format!(
        "loss {:.4} {figure} {:.0} tok/s",
        record["loss"].as_f64().unwrap_or(f64::NAN),
        record["tokens_per_sec"].as_f64().unwrap_or(0.0)
    )
}
