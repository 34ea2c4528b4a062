//! Attention a slice at a time under activation checkpointing (`sliced_attention`)
//! against all at once: the same outputs and the same gradients, for LSH attention one
//! (head, round) at a time, local attention one head at a time, and whole models with
//! and without reversible layers, dropout on everywhere. Also the checkpoint node itself
//! and the dropout masks that slices draw as their share of the whole's.

mod common;

use std::collections::HashMap;

use reformer::model::activation_checkpoint::checkpoint;
use reformer::model::attention::hashing::{random_rotations, HashSpec};
use reformer::model::attention::local::LocalAttention;
use reformer::model::attention::lsh::{lsh_attend, LshParams};
use reformer::model::config::{ExecutionConfig, WindowRule};
use reformer::model::seeded_random::{self, dropout, dropout_block};
use reformer::model::{ForwardMode, ModelConfig, ReformerLm};
use reformer::precision::Precision;
use tch::{nn, Device, Kind, Tensor};

/// Slices compute the same operations on fewer rows; in float64 only summation order
/// (a matmul's blocking) can differ.
const F64_TOLERANCE: f64 = 1e-10;
const F32_TOLERANCE: f64 = 1e-5;
const FORWARD_SEED: u64 = 21;
/// Weights N(0, 0.2²): about the default initialisation's scale at width 32.
const WEIGHT_STD: f64 = 0.2;

fn normal(seed: u64, shape: &[i64]) -> Tensor {
    seeded_random::normal(seed, shape, Device::Cpu).to_kind(Kind::Double)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// A function of (qk, v) and the gradients of sum(out · probe) with respect to both.
fn value_and_grads(f: impl Fn(&Tensor, &Tensor) -> Tensor, qk: &Tensor, v: &Tensor) -> (Tensor, Vec<Tensor>) {
    let (qk, v) = (qk.detach().set_requires_grad(true), v.detach().set_requires_grad(true));
    let out = f(&qk, &v);
    let probe = normal(99, &out.size());
    let grads = Tensor::run_backward(&[(&out * &probe).sum(Kind::Double)], &[&qk, &v], false, false);
    (out.detach(), grads)
}

fn lsh_params(strict_causal: bool, sliced: bool) -> LshParams {
    LshParams {
        n_hashes: 3,
        hash: HashSpec { n_buckets: 4, factors: vec![] },
        chunk_len: 4,
        n_chunks_before: 1,
        n_chunks_after: 0,
        causal: true,
        rule: if strict_causal { WindowRule::Strict } else { WindowRule::Paper },
        dropout: 0.2,
        sliced,
        ..Default::default()
    }
}

fn check_lsh_slices(strict_causal: bool) {
    // 30 positions: two of padding up to the chunk; 3 heads × 3 rounds = 9 slices.
    let (qk, v) = (normal(1, &[2, 3, 30, 8]), normal(2, &[2, 3, 30, 8]));
    let rotations =
        random_rotations(3, 8, 3, &HashSpec { n_buckets: 4, factors: vec![] }, Device::Cpu).to_kind(Kind::Double);
    let mode = ForwardMode::train(FORWARD_SEED);
    let run = |sliced: bool| {
        let p = lsh_params(strict_causal, sliced);
        value_and_grads(|qk, v| lsh_attend(qk, v, &rotations, &p, mode), &qk, &v)
    };
    let ((whole, whole_grads), (sliced, sliced_grads)) = (run(false), run(true));
    let no_dropout =
        lsh_attend(&qk, &v, &rotations, &lsh_params(strict_causal, false), ForwardMode::eval(FORWARD_SEED));
    assert!(max_abs_diff(&whole, &no_dropout) > 1e-3, "dropout drew no mask: the check would be blind to it");
    assert!(max_abs_diff(&sliced, &whole) <= F64_TOLERANCE, "outputs differ by {}", max_abs_diff(&sliced, &whole));
    for (name, (s, w)) in ["qk", "v"].iter().zip(sliced_grads.iter().zip(&whole_grads)) {
        assert!(max_abs_diff(s, w) <= F64_TOLERANCE, "d{name} differs by {}", max_abs_diff(s, w));
    }
}

#[test]
fn lsh_one_head_and_round_at_a_time_equals_all_at_once() {
    check_lsh_slices(false);
}

#[test]
fn strict_causal_lsh_one_head_and_round_at_a_time_equals_all_at_once() {
    check_lsh_slices(true);
}

fn model_config(sliced_attention: bool, reversible: bool) -> ModelConfig {
    let cfg = ModelConfig {
        dropout_hidden: 0.1,
        dropout_attention: 0.2,
        dropout_ff: 0.1,
        execution: ExecutionConfig { reversible, sliced_attention, ..Default::default() },
        ..common::tiny_model_config()
    };
    cfg.validate().unwrap();
    cfg
}

#[test]
fn local_attention_one_head_at_a_time_equals_all_heads() {
    // Local attention reads q, k and v only; its projection weights play no part here.
    let vs = nn::VarStore::new(Device::Cpu);
    let whole = LocalAttention::new(vs.root() / "whole", &model_config(false, false));
    let sliced = LocalAttention::new(vs.root() / "sliced", &model_config(true, false));
    let (q, k, v) = (normal(4, &[2, 3, 21, 8]), normal(5, &[2, 3, 21, 8]), normal(6, &[2, 3, 21, 8]));
    let mode = ForwardMode::train(FORWARD_SEED);
    let run = |layer: &LocalAttention| value_and_grads(|q, v| layer.attend(q, &k, v, mode), &q, &v);
    let ((w, w_grads), (s, s_grads)) = (run(&whole), run(&sliced));
    let no_dropout = whole.attend(&q, &k, &v, ForwardMode::eval(FORWARD_SEED));
    assert!(max_abs_diff(&w, &no_dropout) > 1e-3, "dropout drew no mask: the check would be blind to it");
    assert!(max_abs_diff(&s, &w) <= F64_TOLERANCE, "outputs differ by {}", max_abs_diff(&s, &w));
    for (s, w) in s_grads.iter().zip(&w_grads) {
        assert!(max_abs_diff(s, w) <= F64_TOLERANCE, "gradients differ by {}", max_abs_diff(s, w));
    }
}

fn grads(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables().into_iter().map(|(name, var)| (name, var.grad())).collect()
}

/// Loss and every parameter's gradient of a sliced model against the same weights run
/// all at once with ordinary autograd.
fn check_model(reversible: bool, kind: Kind) {
    check_model_in(reversible, kind, Precision::F32, if kind == Kind::Double { F64_TOLERANCE } else { F32_TOLERANCE });
}

/// `check_model` with the forward under autocast to `precision` (the backward outside
/// it), within `tolerance`.
fn check_model_in(reversible: bool, kind: Kind, precision: Precision, tolerance: f64) {
    let mut plain_vs = nn::VarStore::new(Device::Cpu);
    let plain = ReformerLm::new(plain_vs.root(), &model_config(false, false));
    common::draw_weights(&plain_vs, WEIGHT_STD, WEIGHT_STD);
    let mut sliced_vs = nn::VarStore::new(Device::Cpu);
    let sliced = ReformerLm::new(sliced_vs.root(), &model_config(true, reversible));
    if kind == Kind::Double {
        plain_vs.double();
        sliced_vs.double();
    }
    sliced_vs.copy(&plain_vs).unwrap();
    let uniform = seeded_random::uniform(8, &[2, 61], Device::Cpu);
    let tokens = (uniform * 32.0).to_kind(Kind::Int64);
    let (inputs, targets) = (tokens.narrow(1, 0, 60), tokens.narrow(1, 1, 60));
    let mode = ForwardMode::train(FORWARD_SEED);
    let loss = |lm: &ReformerLm| {
        precision
            .autocast(Device::Cpu, || {
                let log_probs = lm.forward(&inputs, mode).log_softmax(-1, kind); // (B, T, V)
                -log_probs.gather(-1, &targets.unsqueeze(-1), false).mean(kind)
            })
            .unwrap()
    };
    let (plain_loss, sliced_loss) = (loss(&plain), loss(&sliced));
    let loss_gap = (plain_loss.double_value(&[]) - sliced_loss.double_value(&[])).abs();
    assert!(loss_gap <= tolerance, "losses differ by {loss_gap}");
    plain_loss.backward();
    sliced_loss.f_backward().unwrap();
    let (expected, actual) = (grads(&plain_vs), grads(&sliced_vs));
    for (name, expected) in &expected {
        assert!(actual[name].defined(), "{name} got no gradient when sliced");
        let error = (&actual[name] - expected).norm().double_value(&[]) / expected.norm().double_value(&[]).max(1e-30);
        assert!(error <= tolerance * 10.0, "reversible {reversible}, {kind:?}: {name} relative error {error:e}");
    }
}

#[test]
fn sliced_reversible_model_gradients_equal_unsliced_under_bf16_autocast() {
    check_model_in(true, Kind::Float, Precision::Bf16, F32_TOLERANCE);
}

#[test]
fn sliced_model_gradients_equal_unsliced_f64() {
    check_model(false, Kind::Double);
}

#[test]
fn sliced_reversible_model_gradients_equal_unsliced_f64() {
    check_model(true, Kind::Double);
}

#[test]
fn sliced_reversible_model_gradients_equal_unsliced_f32() {
    check_model(true, Kind::Float);
}

#[test]
fn checkpoint_gradients_equal_autograd_and_an_unused_output_is_fine() {
    let x = normal(10, &[5, 4]).set_requires_grad(true);
    let w = normal(11, &[4, 3]);
    let f = {
        let w = w.shallow_clone();
        move |x: &[Tensor]| vec![x[0].matmul(&w).tanh(), x[0].sum(Kind::Double)]
    };
    let outputs = checkpoint(&[x.shallow_clone()], 2, f);
    assert_eq!(outputs.len(), 2);
    // Only the first output reaches the loss: the second receives no gradient.
    let grad = Tensor::run_backward(&[outputs[0].sin().sum(Kind::Double)], &[&x], false, false).remove(0);
    let expected = Tensor::run_backward(&[x.matmul(&w).tanh().sin().sum(Kind::Double)], &[&x], false, false).remove(0);
    assert!(max_abs_diff(&grad, &expected) <= 1e-14);
    // Without autograd recording, the function simply runs.
    let plain = tch::no_grad(|| checkpoint(&[x.shallow_clone()], 2, |x: &[Tensor]| vec![x[0].exp(), x[0].exp()]));
    assert!(!plain[0].requires_grad());
}

/// A wrong output count or a libtorch error inside the function is reported with its
/// message (a panic, as tch's operators report theirs), not a crash of the process.
#[test]
fn checkpoint_errors_are_reported_not_a_crash() {
    let x = normal(12, &[3]).set_requires_grad(true);
    let message = |f: Box<dyn Fn(&[Tensor]) -> Vec<Tensor>>, n_outputs| {
        let x = x.shallow_clone();
        let run = std::panic::AssertUnwindSafe(move || checkpoint(&[x], n_outputs, f));
        let panic = std::panic::catch_unwind(run).expect_err("must be reported");
        panic.downcast_ref::<String>().cloned().unwrap_or_default()
    };
    let wrong_count = message(Box::new(|x: &[Tensor]| vec![x[0].exp()]), 2);
    assert!(wrong_count.contains("1 outputs, 2 declared"), "{wrong_count}");
    let failing = message(Box::new(|x: &[Tensor]| vec![x[0].matmul(&x[0].view([1, 3]))]), 1);
    assert!(!failing.is_empty(), "a libtorch error inside the function must be reported");
}

#[test]
fn a_blocks_dropout_mask_is_its_share_of_the_wholes() {
    let x = Tensor::ones([2, 3, 4, 5], (Kind::Float, Device::Cpu));
    let whole = dropout(&x, 0.4, 5, true);
    for (offset, size) in [([0, 1, 2, 0], [2, 1, 2, 5]), ([1, 0, 0, 3], [1, 3, 4, 2]), ([0, 0, 0, 0], [2, 3, 4, 5])] {
        let mut block = x.shallow_clone();
        let mut expected = whole.shallow_clone();
        for dim in 0..4 {
            block = block.narrow(dim as i64, offset[dim], size[dim]);
            expected = expected.narrow(dim as i64, offset[dim], size[dim]);
        }
        let got = dropout_block(&block, 0.4, 5, true, &[2, 3, 4, 5], &offset);
        assert!(got.equal(&expected), "block at {offset:?} of size {size:?}");
    }
}
