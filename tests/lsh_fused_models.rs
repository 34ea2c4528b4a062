//! Whole models with their LSH layers through the fused kernel against the same weights
//! on the batched path (`lsh.fused = false`, ordinary residuals, all at once): the same
//! loss and the same gradient of every parameter, with reversible and ordinary layers,
//! sliced attention and not, the paper's and the strict causal rule, in float64 and
//! float32. Hidden and feed-forward dropout stay on (attention dropout would send
//! training to the batched path).

mod common;

use std::collections::HashMap;

use reformer::model::config::{ExecutionConfig, WindowRule};
use reformer::model::seeded_random;
use reformer::model::{ForwardMode, ModelConfig, ReformerLm};
use tch::{nn, Device, Kind, Tensor};

const WEIGHT_STD: f64 = 0.2;

/// A model of every attention kind with two LSH layers, long enough for several chunks.
fn config(fused: bool, reversible: bool, sliced: bool, strict: bool) -> ModelConfig {
    let mut cfg = ModelConfig {
        dropout_hidden: 0.1,
        dropout_ff: 0.1,
        n_layers: 4,
        execution: ExecutionConfig { reversible, sliced_attention: sliced, fused_lsh: fused, ..Default::default() },
        ..common::tiny_model_config()
    };
    cfg.lsh.window = if strict { WindowRule::Strict } else { WindowRule::Paper };
    cfg.validate().unwrap();
    cfg
}

fn grads(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables().into_iter().map(|(name, var)| (name, var.grad())).collect()
}

/// The batched, ordinary, unsliced model otherwise like `cfg`.
fn batched(cfg: &ModelConfig) -> ModelConfig {
    let execution =
        ExecutionConfig { reversible: false, sliced_attention: false, fused_lsh: false, ..cfg.execution.clone() };
    ModelConfig { execution, ..cfg.clone() }
}

/// The loss and gradients of `cfg` against those of `reference_cfg` with the same
/// weights: the largest relative error of the loss and of any parameter's gradient.
fn error_against(cfg: &ModelConfig, reference_cfg: &ModelConfig, kind: Kind) -> f64 {
    let mut reference_vs = nn::VarStore::new(Device::Cpu);
    let reference = ReformerLm::new(reference_vs.root(), reference_cfg);
    common::draw_weights(&reference_vs, WEIGHT_STD, WEIGHT_STD);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = ReformerLm::new(vs.root(), cfg);
    if kind == Kind::Double {
        reference_vs.double();
        vs.double();
    }
    vs.copy(&reference_vs).unwrap();
    let tokens = (seeded_random::uniform(8, &[2, 61], Device::Cpu) * 32.0).to_kind(Kind::Int64);
    let (inputs, targets) = (tokens.narrow(1, 0, 60), tokens.narrow(1, 1, 60));
    let loss = |lm: &ReformerLm| {
        let log_probs = lm.forward(&inputs, ForwardMode::train(21)).log_softmax(-1, kind); // (B, T, V)
        -log_probs.gather(-1, &targets.unsqueeze(-1), false).mean(kind)
    };
    let (expected_loss, actual_loss) = (loss(&reference), loss(&model));
    let mut worst = (expected_loss.double_value(&[]) - actual_loss.double_value(&[])).abs();
    expected_loss.backward();
    actual_loss.backward();
    let (expected, actual) = (grads(&reference_vs), grads(&vs));
    for (name, expected) in &expected {
        assert!(actual[name].defined(), "{name} got no gradient");
        let error = (&actual[name] - expected).norm().double_value(&[]) / expected.norm().double_value(&[]).max(1e-30);
        worst = worst.max(error);
    }
    worst
}

fn check(reversible: bool, sliced: bool, strict: bool) {
    for (kind, tolerance) in [(Kind::Double, 1e-10), (Kind::Float, 1e-5)] {
        let cfg = config(true, reversible, sliced, strict);
        let error = error_against(&cfg, &batched(&cfg), kind);
        let what = format!("reversible {reversible}, sliced {sliced}, strict {strict}, {kind:?}");
        assert!(error <= tolerance, "{what}: the fused model differs by {error:e} (tolerance {tolerance:e})");
    }
}

#[test]
fn ordinary_model_through_the_kernel_equals_the_batched_path() {
    check(false, false, false);
    check(false, true, false);
}

#[test]
fn reversible_model_through_the_kernel_equals_the_batched_path() {
    check(true, false, false);
    check(true, true, false);
}

#[test]
fn strict_causal_models_through_the_kernel_equal_the_batched_path() {
    check(false, false, true);
    check(true, true, true);
}

#[test]
fn the_comparison_sees_the_lsh_layers() {
    // Different hash rounds change the LSH layers' output: a check blind to them would
    // pass this pair too.
    let cfg = config(true, false, false, false);
    let mut other = cfg.clone();
    other.lsh.n_hashes = 1;
    let error = error_against(&other, &batched(&cfg), Kind::Double);
    assert!(error > 1e-4, "one round instead of two changed the model by only {error:e}");
}
