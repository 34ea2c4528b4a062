//! Scoring during a run: the validation at each `train.eval_every` steps (logged, drawn in
//! the run's curve.svg, the best loss kept, with `train.partner_reach` the LSH layers'
//! partner reach beside it), every score under the run's precision and shared over the
//! ranks, and how a score reads in train's lines.

use anyhow::Result;
use serde_json::json;

use super::Trainer;
use crate::allocator::release_free_memory;
use crate::model::attention::partner_reach::partner_reach_per_layer;
use crate::model::ForwardMode;
use crate::score::{evaluate_shared, Figure, Score, EVAL_SEED};
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
        let reach = self.partner_reach()?;
        if self.is_main {
            let mut record = json!({"step": self.state.step, "valid_loss": score.loss,
                "valid_bpc": score.bpc, "valid_accuracy": score.accuracy, "elapsed": self.state.elapsed_secs});
            if let Some(reach) = &reach {
                record["partner_reach"] = json!(reach);
            }
            self.run_dir.log_metrics(&record)?;
            // The picture is a convenience: a failure to draw it does not stop the run.
            if let Err(e) = crate::curves::write_run_curve(&self.run_dir.path) {
                self.progress.println(&format!("warning: curve.svg not drawn: {e:#}"));
            }
        }
        let mut line = format!("step {}: validation {}", self.state.step, score.describe(Figure::of(self.cfg.task)));
        if let Some(reach) = &reach {
            let layers: Vec<String> = reach.iter().map(|fraction| format!("{fraction:.3}")).collect();
            line += &format!(", partner reach per LSH layer [{}]", layers.join(", "));
        }
        self.progress.println(&line);
        self.last_valid = Some((self.state.step, score));
        Ok(is_best)
    }

    /// With `train.partner_reach`, on the main rank: each LSH layer's partner reach over
    /// the first validation batch, under the run's precision and with the rotations a
    /// validation forward draws (see `model::attention::partner_reach`).
    fn partner_reach(&self) -> Result<Option<Vec<f64>>> {
        let Some(batch) = self.valid_batches.first().filter(|_| self.cfg.train.partner_reach && self.is_main) else {
            return Ok(None);
        };
        let batch = batch.to_device(self.device);
        let scored = batch.weights.gt(0.0); // (B, T)
        let offset = self.cfg.train.duplication.partner_offset();
        let mode = ForwardMode::eval(EVAL_SEED);
        let precision = self.cfg.train.precision;
        let reach = precision
            .autocast(self.device, || partner_reach_per_layer(&self.model, &batch.inputs, &scored, offset, mode))?;
        Ok(Some(reach))
    }

    /// `batches` scored under the run's precision, each rank its share; the freed memory
    /// of the training steps goes back to the system first, and the scoring's after.
    pub(super) fn score(&self, batches: &[Batch]) -> Result<Score> {
        let precision = self.cfg.train.precision;
        release_free_memory();
        let score = precision
            .autocast(self.device, || evaluate_shared(&self.model, batches, self.device, self.group.as_ref()))?;
        release_free_memory();
        score
    }
}
