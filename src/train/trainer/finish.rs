//! The end of a run, whatever stopped it: the exit save, the final validation, the test
//! score (language-model tasks) or the Table-2 row (duplication), and the `--json` summary.

use anyhow::{bail, Result};
use serde_json::json;
use tch::Device;

use super::stopping::Stop;
use super::Trainer;
use crate::allocator::release_free_memory;
use crate::hash_rounds_sweep::{self, TABLE2_ROUNDS};
use crate::model::ReformerLm;
use crate::precision::Precision;
use crate::progress::Progress;
use crate::score::{evaluate, Figure};
use crate::tasks::{Batch, Split};

impl Trainer {
    /// Ends the run: saves the state the loop stopped at (unless saved already, or the
    /// stop is a non-finite loss), then reports the validation score, the test score (LM
    /// tasks) or the Table-2 row (duplication), and the `--json` summary.
    pub fn finish(mut self, stop: Stop) -> Result<()> {
        self.save_at_stop(&stop)?;
        std::mem::replace(&mut self.progress, Progress::silent()).finish();
        if let Stop::NonFinite(what) = stop {
            bail!("{what}; stopped. The last good checkpoint is in {}", self.run_dir.path.display());
        }
        let valid = match self.last_valid {
            Some((step, score)) if step == self.state.step => score,
            _ => self.score(&self.valid_batches)?,
        };
        let tokens_per_sec = self.window.total_tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let mut summary = json!({
            "task": self.cfg.task, "steps": self.state.step, "skipped_steps": self.state.skipped_steps,
            "valid_loss": valid.loss, "tokens_per_sec": tokens_per_sec, "elapsed_secs": self.state.elapsed_secs,
            "checkpoint": self.run_dir.latest().map(|p| p.display().to_string()),
            "precision": self.cfg.train.precision,
            "peak_memory_bytes": crate::memory_plan::budget::process_peak_bytes(self.device),
        });
        if let Some(scaler) = &self.state.loss_scale {
            summary["overflow_steps"] = json!(scaler.overflow_steps);
            summary["loss_scale"] = json!(scaler.scale);
        }
        if self.is_main {
            eprintln!("final validation: {}", valid.describe(Figure::of(self.cfg.task)));
        }
        if self.task.reports_bpc() {
            summary["valid_bpc"] = json!(valid.bpc);
            let batch_size = self.cfg.train.batch_size * self.world_size();
            let test_batches = self.task.split_batches(Split::Test, batch_size, self.eval_bytes)?;
            let test = self.score(&test_batches)?;
            if self.is_main {
                eprintln!("test: {:.4} bits per byte over {} bytes", test.bpc, test.n_targets);
            }
            summary["test_bpc"] = json!(test.bpc);
        } else {
            summary["valid_accuracy"] = json!(valid.accuracy);
            if self.is_main {
                let precision = self.cfg.train.precision;
                let seq_len = self.task.seq_len();
                summary["accuracy_by_rounds"] =
                    table2_row(&mut self.model, &self.valid_batches, seq_len, self.device, precision)?;
            }
        }
        if let Some(group) = &self.group {
            summary["world_size"] = json!(group.world_size);
            // No rank leaves (and tears down the group) while another still evaluates.
            group.barrier()?;
        }
        if self.json && self.is_main {
            println!("{summary}");
        }
        Ok(())
    }

    /// Saves the state the loop stopped at, unless it is saved already or the stop is a
    /// non-finite loss.
    fn save_at_stop(&mut self, stop: &Stop) -> Result<()> {
        match stop {
            // The state that gave a non-finite loss is not saved: the last good one stays.
            Stop::NonFinite(_) => Ok(()),
            _ if self.last_saved == self.state.step => Ok(()),
            // At once, unvalidated: a second Ctrl-C may follow.
            Stop::Interrupted => self.save(false),
            // The time limit (or a run with no step left): validated, so it may be the best.
            Stop::Done | Stop::OutOfTime | Stop::TargetReached => {
                let is_best = self.validate()?;
                self.save(is_best)
            }
        }
    }
}

/// Accuracy with 1, 2, 4 and 8 hash rounds (and full attention: not swapped in here),
/// printed like a row of the paper's Table 2, scored under `precision`.
fn table2_row(
    model: &mut ReformerLm,
    batches: &[Batch],
    seq_len: i64,
    device: Device,
    precision: Precision,
) -> Result<serde_json::Value> {
    let settings = TABLE2_ROUNDS.map(Some);
    let scores = hash_rounds_sweep::sweep(model, &settings, seq_len, |model, _| {
        release_free_memory(); // each setting's tensors differ in size from the last's
        precision.autocast(device, || evaluate(model, batches, device))
    })?;
    let mut row = serde_json::Map::new();
    let mut line = format!("trained with {} rounds, evaluated with:", model.cfg.lsh.n_hashes);
    for (rounds, score) in TABLE2_ROUNDS.iter().zip(&scores) {
        line += &format!("  {rounds}: {:.1}%", 100.0 * score.accuracy);
        row.insert(rounds.to_string(), json!(score.accuracy));
    }
    eprintln!("{line}");
    Ok(serde_json::Value::Object(row))
}
