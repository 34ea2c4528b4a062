//! Scoring a model on fixed batches: mean loss, bits per byte, accuracy.

use anyhow::Result;
use serde::Serialize;
use tch::Device;

use crate::distributed::ProcessGroup;
use crate::model::{ForwardMode, ReformerLm};
use crate::tasks::Batch;

/// Seed of the LSH rotations during evaluation (fixed, so that scores are repeatable).
pub const EVAL_SEED: u64 = 0xE7A1;

#[derive(Clone, Copy, Debug, Serialize)]
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
    Score::from_totals(totals(model, batches.iter(), device))
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
    let sums = group.sum_f64(&totals(model, mine.iter(), device))?;
    Ok(Score::from_totals([sums[0], sums[1], sums[2]]))
}

/// Summed negative log-likelihood (nats), correct predictions and scored targets.
fn totals<'a>(model: &ReformerLm, batches: impl Iterator<Item = &'a Batch>, device: Device) -> [f64; 3] {
    let (mut nll, mut correct, mut weight) = (0.0, 0.0, 0.0);
    tch::no_grad(|| {
        for batch in batches {
            let batch = batch.to_device(device);
            let stats = model.loss(&batch.inputs, &batch.targets, Some(&batch.weights), ForwardMode::eval(EVAL_SEED));
            nll += stats.loss.double_value(&[]) * stats.weight;
            correct += stats.correct;
            weight += stats.weight;
        }
    });
    [nll, correct, weight]
}

impl Score {
    fn from_totals([nll, correct, weight]: [f64; 3]) -> Self {
        let loss = nll / weight.max(1.0);
        Self { loss, bpc: loss / std::f64::consts::LN_2, accuracy: correct / weight.max(1.0), n_targets: weight }
    }
}
