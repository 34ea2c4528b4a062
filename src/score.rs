//! Scoring a model on fixed batches: mean loss, bits per byte, accuracy.

use std::ops::AddAssign;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::distributed::ProcessGroup;
use crate::model::{ForwardMode, ReformerLm};
use crate::tasks::{Batch, TaskKind};

/// Seed of the LSH rotations during evaluation (fixed, so that scores are repeatable).
pub const EVAL_SEED: u64 = 0xE7A1;

/// Means per scored target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Mean negative log-likelihood per scored target, in nats.
    pub loss: f64,
    /// The same in bits (bits per byte for byte-level text).
    pub bpc: f64,
    /// Fraction of scored targets ranked first by the model.
    pub accuracy: f64,
    /// Targets scored.
    pub n_targets: f64,
}

/// Averages over all scored targets of `batches`, without gradients or dropout.
pub fn evaluate(model: &ReformerLm, batches: &[Batch], device: Device) -> Score {
    ScoreTotals::of(model, batches.iter(), device).score()
}

/// `evaluate` with every batch's sequences shared out over the ranks of `group` (rank r
/// scores its contiguous share of each batch) and the totals summed: every rank gets the
/// score of all batches, the same set whatever the number of ranks. Without a group,
/// `evaluate`.
pub fn evaluate_shared(
    model: &ReformerLm,
    batches: &[Batch],
    device: Device,
    group: Option<&ProcessGroup>,
) -> Result<Score> {
    let Some(group) = group else { return Ok(evaluate(model, batches, device)) };
    let (rank, world) = (group.rank, group.world_size);
    let mine: Vec<Batch> = batches
        .iter()
        .filter_map(|batch| {
            let rows = batch.inputs.size()[0];
            let share = (rows + world - 1) / world;
            let start = (rank * share).min(rows);
            let len = share.min(rows - start);
            (len > 0).then(|| batch.rows(start, len))
        })
        .collect();
    let mine = ScoreTotals::of(model, mine.iter(), device);
    let sums = group.sum_f64(&[mine.nll, mine.correct, mine.n_targets])?;
    Ok(ScoreTotals { nll: sums[0], correct: sums[1], n_targets: sums[2] }.score())
}

/// Sums over scored targets, which add up over batches and ranks; a `Score` is their
/// mean.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScoreTotals {
    /// Summed negative log-likelihood, in nats.
    pub nll: f64,
    /// Targets ranked first by the model.
    pub correct: f64,
    /// Targets scored (their summed weights).
    pub n_targets: f64,
}

impl ScoreTotals {
    /// The totals of `batches`, without gradients or dropout, `model.execution.scoring_rows`
    /// sequences per forward pass (every sequence's rotations are the same whatever the
    /// rows beside it).
    pub fn of<'a>(model: &ReformerLm, batches: impl Iterator<Item = &'a Batch>, device: Device) -> Self {
        let mut totals = Self::default();
        tch::no_grad(|| {
            let rows = model.cfg.execution.scoring_rows;
            for (_, batch) in batches.flat_map(|batch| batch.pieces(rows)) {
                let batch = batch.to_device(device);
                let mode = ForwardMode::eval(EVAL_SEED);
                let stats = model.loss(&batch.inputs, &batch.targets, Some(&batch.weights), mode);
                totals += Self {
                    nll: stats.loss.double_value(&[]) * stats.weight,
                    correct: stats.correct,
                    n_targets: stats.weight,
                };
            }
        });
        totals
    }

    /// The means per scored target (0 without targets).
    pub fn score(&self) -> Score {
        let loss = self.nll / self.n_targets.max(1.0);
        Score {
            loss,
            bpc: loss / std::f64::consts::LN_2,
            accuracy: self.correct / self.n_targets.max(1.0),
            n_targets: self.n_targets,
        }
    }
}

impl AddAssign for ScoreTotals {
    fn add_assign(&mut self, other: Self) {
        self.nll += other.nll;
        self.correct += other.correct;
        self.n_targets += other.n_targets;
    }
}

/// What a task is judged by: bits per byte for the language-model tasks, second-copy
/// accuracy for duplication. The one place that names and formats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    /// Bits per byte: lower is better.
    BitsPerByte,
    /// Accuracy on the scored targets (the second copy, for duplication), in percent.
    Accuracy,
}

impl Figure {
    pub fn of(task: TaskKind) -> Self {
        match task {
            TaskKind::Duplication => Self::Accuracy,
            TaskKind::Enwik8 | TaskKind::Text => Self::BitsPerByte,
        }
    }

    /// The figure of `score` in its unit: bits per byte, or accuracy in percent.
    pub fn value(self, score: &Score) -> f64 {
        self.in_unit(match self {
            Self::BitsPerByte => score.bpc,
            Self::Accuracy => score.accuracy,
        })
    }

    /// The key under which the figure is stored (bits, or accuracy as a fraction) in
    /// `eval --json` rows, and after `valid_` in `metrics.jsonl` records.
    pub fn stored_key(self) -> &'static str {
        match self {
            Self::BitsPerByte => "bpc",
            Self::Accuracy => "accuracy",
        }
    }

    /// A number stored under `stored_key` in the figure's unit (a fraction in percent).
    pub fn in_unit(self, stored: f64) -> f64 {
        match self {
            Self::BitsPerByte => stored,
            Self::Accuracy => 100.0 * stored,
        }
    }

    /// The figure's name with its unit, e.g. for an axis.
    pub fn name(self) -> &'static str {
        match self {
            Self::BitsPerByte => "bits per byte",
            Self::Accuracy => "second-copy accuracy (%)",
        }
    }

    /// A figure of `value` (as `value` returns it) in words: "1.2345 bits per byte",
    /// "second-copy accuracy 99.50%".
    pub fn format(self, value: f64) -> String {
        match self {
            Self::BitsPerByte => format!("{value:.4} bits per byte"),
            Self::Accuracy => format!("second-copy accuracy {value:.2}%"),
        }
    }
}

impl Score {
    /// The loss and the figure, e.g. "loss 0.8841, 1.2755 bits per byte".
    pub fn describe(&self, figure: Figure) -> String {
        format!("loss {:.4}, {}", self.loss, figure.format(figure.value(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_before_the_mean_is_taken() {
        let first = ScoreTotals { nll: 2.0 * std::f64::consts::LN_2, correct: 1.0, n_targets: 2.0 };
        let second = ScoreTotals { nll: 6.0 * std::f64::consts::LN_2, correct: 5.0, n_targets: 6.0 };
        let mut both = first;
        both += second;
        let score = both.score();
        // The mean over all 8 targets, not the mean of the two batches' means.
        assert!((score.bpc - 1.0).abs() < 1e-12 && (score.accuracy - 0.75).abs() < 1e-12);
        assert_eq!(score.n_targets, 8.0);
        assert_eq!(ScoreTotals::default().score().loss, 0.0);
    }

    #[test]
    fn each_task_is_described_by_its_figure() {
        let score = Score { loss: 0.5, bpc: 0.5 / std::f64::consts::LN_2, accuracy: 0.995, n_targets: 10.0 };
        assert_eq!(Score::describe(&score, Figure::of(TaskKind::Text)), "loss 0.5000, 0.7213 bits per byte");
        assert_eq!(score.describe(Figure::of(TaskKind::Duplication)), "loss 0.5000, second-copy accuracy 99.50%");
        assert_eq!(Figure::of(TaskKind::Enwik8), Figure::BitsPerByte);
    }
}
