//! A step's batch computed in micro-batches equals the whole batch at once: with every
//! kind of dropout on (embedding, residual branches, feed-forward, attention
//! probabilities) and LSH, local and full attention, reversible or not, sliced or not,
//! the parts' losses (weighted by their share of the targets) and summed gradients equal
//! the whole batch's, to float32 rounding (the loss is computed in float32).

mod common;

use std::collections::HashMap;

use reformer::model::config::ExecutionConfig;
use reformer::model::seeded_random;
use reformer::model::{ForwardMode, ModelConfig, ReformerLm};
use tch::{nn, Device, Kind, Tensor};

/// Float32 rounding of sums taken in another order.
const TOLERANCE: f64 = 1e-5;
const FORWARD_SEED: u64 = 33;
const BATCH: i64 = 4;
const SEQ_LEN: i64 = 48;

fn config(reversible: bool, sliced: bool) -> ModelConfig {
    let cfg = ModelConfig {
        dropout_hidden: 0.1,
        dropout_attention: 0.2,
        dropout_ff: 0.1,
        execution: ExecutionConfig {
            reversible,
            sliced_attention: sliced,
            ff_chunk_len: Some(16),
            ..Default::default()
        },
        ..common::tiny_model_config()
    };
    cfg.validate().unwrap();
    cfg
}

/// The loss over rows `start..start + len` of the batch, as their share of the whole
/// batch (mean over the whole batch's targets), and its backward.
fn part_loss(model: &ReformerLm, tokens: &Tensor, start: i64, len: i64) -> f64 {
    let rows = tokens.narrow(0, start, len);
    let (inputs, targets) = (rows.narrow(1, 0, SEQ_LEN), rows.narrow(1, 1, SEQ_LEN));
    let mode = ForwardMode::train(FORWARD_SEED).in_batch(start, BATCH);
    let stats = model.loss(&inputs, &targets, None, mode);
    let loss = stats.loss * (len as f64 / BATCH as f64);
    loss.backward();
    loss.double_value(&[])
}

fn grads(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables().into_iter().map(|(name, var)| (name, var.grad().copy())).collect()
}

fn check(reversible: bool, sliced: bool) {
    let what = format!("reversible {reversible}, sliced {sliced}");
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ReformerLm::new(vs.root(), &config(reversible, sliced));
    common::draw_weights(&vs, 0.2, 0.2);
    let tokens = (seeded_random::uniform(9, &[BATCH, SEQ_LEN + 1], Device::Cpu) * 32.0).to_kind(Kind::Int64);

    let whole = part_loss(&model, &tokens, 0, BATCH);
    let expected = grads(&vs);
    for variable in vs.variables().values() {
        let _ = variable.grad().zero_();
    }
    let parts = part_loss(&model, &tokens, 0, 1) + part_loss(&model, &tokens, 1, 3);
    let actual = grads(&vs);

    assert!((whole - parts).abs() <= TOLERANCE, "{what}: loss {whole} whole, {parts} in parts");
    for (name, expected) in &expected {
        let gap = (&actual[name] - expected).abs().max().double_value(&[]);
        assert!(gap <= TOLERANCE, "{what}: {name} differs by {gap:e}");
    }
    // The masks matter: a part drawn as its own batch computes something else.
    let alone = {
        let rows = tokens.narrow(0, 1, 3);
        let mode = ForwardMode::train(FORWARD_SEED);
        tch::no_grad(|| model.loss(&rows.narrow(1, 0, SEQ_LEN), &rows.narrow(1, 1, SEQ_LEN), None, mode).loss)
    };
    let shared = {
        let rows = tokens.narrow(0, 1, 3);
        let mode = ForwardMode::train(FORWARD_SEED).in_batch(1, BATCH);
        tch::no_grad(|| model.loss(&rows.narrow(1, 0, SEQ_LEN), &rows.narrow(1, 1, SEQ_LEN), None, mode).loss)
    };
    let blind = (alone.double_value(&[]) - shared.double_value(&[])).abs();
    assert!(blind > 1e-6, "{what}: the batch share changed no mask ({blind:e}): the check would be blind");
}

#[test]
fn micro_batches_equal_the_whole_batch() {
    check(false, false);
}

#[test]
fn reversible_micro_batches_equal_the_whole_batch() {
    check(true, false);
}

#[test]
fn sliced_reversible_micro_batches_equal_the_whole_batch() {
    check(true, true);
}
