//! Scoring during a run: the validation at each `train.eval_every` steps (logged, drawn in
//! the run's curve.svg, the best loss kept), every score under the run's precision and
//! shared over the ranks, and how a score reads in train's lines.

use anyhow::Result;
use serde_json::json;

use super::Trainer;
use crate::score::{evaluate_shared, Figure, Score};
use crate::tasks::Batch;

impl Trainer {
    /// Scores the model on the validation batches (each rank its share), logs the score,
    /// redraws the run's `curve.svg` and keeps the best loss; returns whether this score
    /// is the best so far.
    pub fn validate(&mut self) -> Result<bool> {
        let score = self.score(&self.valid_batches)?;
        let is_best = self.state.best_valid_loss.is_none_or(|best| score.loss < best);
        if is_best {
            self.state.best_valid_loss = Some(score.loss);
        }
        if self.is_main {
            self.run_dir.log_metrics(&json!({"step": self.state.step, "valid_loss": score.loss,
                "valid_bpc": score.bpc, "valid_accuracy": score.accuracy, "elapsed": self.state.elapsed_secs}))?;
            // The picture is a convenience: a failure to draw it does not stop the run.
            if let Err(e) = crate::curves::write_run_curve(&self.run_dir.path) {
                self.progress.println(&format!("warning: curve.svg not drawn: {e:#}"));
            }
        }
        let line = format!("step {}: validation {}", self.state.step, score.describe(Figure::of(self.cfg.task)));
        self.progress.println(&line);
        self.last_valid = Some((self.state.step, score));
        Ok(is_best)
    }

    /// `batches` scored under the run's precision, each rank its share.
    pub(super) fn score(&self, batches: &[Batch]) -> Result<Score> {
        let precision = self.cfg.train.precision;
        precision.autocast(self.device, || evaluate_shared(&self.model, batches, self.device, self.group.as_ref()))?
    }
}
