//! Scoring a model on fixed batches: mean loss, bits per byte, accuracy.

use serde::Serialize;
use tch::Device;

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
    let loss = nll / weight.max(1.0);
    Score { loss, bpc: loss / std::f64::consts::LN_2, accuracy: correct / weight.max(1.0), n_targets: weight }
}
