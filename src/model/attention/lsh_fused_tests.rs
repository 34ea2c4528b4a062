//! The fused LSH kernel against the batched path (its reference): each round's outputs
//! and log-sum-exps, and the gradients of queries/keys and values through both, in
//! float64 (≤ 1e-10) and float32 (≤ 1e-5, relative to the size of a log-sum-exp), over
//! the rules and shapes the kernel covers; and each masking rule, broken in the kernel
//! alone, shown to fail the comparison.

use tch::{Device, Kind, Tensor};

use super::hashing::{random_rotations, HashSpec};
use super::lsh::{attend_each_round, normalize, sort_slots, LshParams, Padded};
use super::lsh_fused::{self, WindowRules};
use super::window_rule::WindowRule;
use crate::model::seeded_random::{self, ForwardMode};

/// One case: the settings, the sequence length and the batch size (heads = batch).
#[derive(Clone)]
struct Case {
    p: LshParams,
    t: i64,
    batch: i64,
}

fn case(n_hashes: i64, chunk_len: i64, causal: bool, t: i64) -> Case {
    let p = LshParams {
        n_hashes,
        hash: HashSpec { n_buckets: 8, factors: vec![] },
        chunk_len,
        n_chunks_before: 1,
        n_chunks_after: 0,
        causal,
        dropout: 0.0,
        sliced: false,
        ..Default::default()
    };
    Case { p, t, batch: 2 }
}

const D_HEAD: i64 = 16;

/// Shared query/keys scaled up so that attention is far from uniform, values, rotations
/// and per-output weights for a scalar loss.
struct Inputs {
    qk: Tensor,
    v: Tensor,
    rotations: Tensor,
}

fn inputs(c: &Case, kind: Kind, seed: u64) -> Inputs {
    let shape = [c.batch, c.batch, c.t, D_HEAD];
    let normal = |tag: u64, shape: &[i64]| seeded_random::normal(seed * 10 + tag, shape, Device::Cpu).to_kind(kind);
    Inputs {
        qk: (normal(1, &shape) * 2.0).set_requires_grad(true),
        v: normal(2, &shape).set_requires_grad(true),
        rotations: random_rotations(seed * 10 + 3, D_HEAD, c.p.n_hashes, &c.p.hash, Device::Cpu),
    }
}

/// Each round's outputs and log-sum-exps, and the gradients of qk and v of a loss that
/// weighs both with fixed random weights.
fn rounds_and_grads(c: &Case, x: &Inputs, fused: bool) -> [Tensor; 4] {
    let p = LshParams { fused, ..c.p.clone() };
    let (out, lse) = attend_each_round(&x.qk, &x.v, &x.rotations, &p, ForwardMode::eval(7));
    backward_of(&out, &lse, x)
}

fn backward_of(out: &Tensor, lse: &Tensor, x: &Inputs) -> [Tensor; 4] {
    let w_out = seeded_random::normal(91, &out.size(), Device::Cpu).to_kind(out.kind());
    let w_lse = seeded_random::normal(92, &lse.size(), Device::Cpu).to_kind(lse.kind());
    let loss = (out * w_out).sum(Kind::Double) + (lse * w_lse).sum(Kind::Double);
    let grads = Tensor::run_backward(&[loss], &[&x.qk, &x.v], false, false);
    [out.detach(), lse.detach(), grads[0].shallow_clone(), grads[1].shallow_clone()]
}

/// max |a − b| / max(1, |b|) over the elements.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    ((&a - &b).abs() / b.abs().clamp_min(1.0)).max().double_value(&[])
}

const NAMES: [&str; 4] = ["outputs", "log-sum-exps", "qk gradient", "v gradient"];

/// The largest relative error of the four, and which.
fn worst(a: &[Tensor; 4], b: &[Tensor; 4]) -> (f64, &'static str) {
    (0..4).map(|i| (relative_error(&a[i], &b[i]), NAMES[i])).fold((0.0, ""), |m, e| if e.0 > m.0 { e } else { m })
}

fn check(c: &Case, label: &str) {
    for (kind, tolerance) in [(Kind::Double, 1e-10), (Kind::Float, 1e-5)] {
        for seed in 0..2 {
            let x = inputs(c, kind, seed);
            let fused = rounds_and_grads(c, &x, true);
            let batched = rounds_and_grads(c, &x, false);
            let (error, what) = worst(&fused, &batched);
            assert!(
                error <= tolerance,
                "{label} {kind:?} seed {seed}: {what} differ by {error:e} (tolerance {tolerance:e})"
            );
        }
    }
}

#[test]
fn causal_one_to_eight_rounds() {
    for n_hashes in [1, 2, 8] {
        check(&case(n_hashes, 8, true, 64), &format!("causal, {n_hashes} rounds"));
    }
}

#[test]
fn one_sequence_fewer_than_threads() {
    // Every block of a phase of the backward then belongs to one sequence.
    let c = Case { batch: 1, ..case(4, 8, true, 64) };
    check(&c, "one sequence");
}

#[test]
fn non_causal_with_chunks_before_and_after() {
    let mut c = case(2, 8, false, 48);
    c.p.n_chunks_after = 1;
    check(&c, "non-causal, 1 before 1 after");
    c.p.n_chunks_before = 0;
    c.p.n_chunks_after = 0;
    check(&c, "non-causal, own chunk only");
    c.p.n_chunks_before = 2;
    check(&c, "non-causal, 2 before");
}

#[test]
fn padding_single_chunk_and_single_position() {
    check(&case(3, 8, true, 61), "causal, padded 61 -> 64");
    check(&case(3, 8, false, 37), "non-causal, padded 37 -> 40");
    check(&case(2, 8, true, 6), "a single chunk");
    check(&case(2, 8, true, 1), "a single position");
}

#[test]
fn factorised_buckets() {
    let mut c = case(2, 8, true, 64);
    c.p.hash = HashSpec { n_buckets: 8, factors: vec![2, 4] };
    check(&c, "factorised 2 · 4 buckets");
}

#[test]
fn strict_causal_and_unscaled_logits() {
    let mut c = case(3, 8, true, 45);
    c.p.rule = WindowRule::Strict;
    check(&c, "strict causal");
    let mut c = case(2, 8, true, 40);
    c.p.scale_logits = false;
    check(&c, "unscaled logits");
}

/// A change to the kernel's rules.
type RuleEdit = dyn Fn(&mut WindowRules);

/// The kernel alone with `rules`, against the batched path with the case's own rules:
/// the relative error of the worst of outputs, log-sum-exps and gradients.
fn error_with_rules(c: &Case, edit: impl Fn(&mut WindowRules)) -> f64 {
    let x = inputs(c, Kind::Double, 0);
    let batched = rounds_and_grads(c, &x, false);
    let Padded { qk, v, buckets, p } = Padded::new(&x.qk, &x.v, &x.rotations, &c.p, ForwardMode::eval(7));
    let sticker = sort_slots(&buckets, p.hash.n_buckets);
    let mut rules = WindowRules::new(&p, c.t);
    edit(&mut rules);
    let q = &qk * (D_HEAD as f64).powf(-0.5);
    let (out, lse) = lsh_fused::attend_rounds(&q, &normalize(&qk), &v, &sticker, &buckets, rules);
    worst(&backward_of(&out, &lse, &x), &batched).0
}

#[test]
fn each_masking_rule_broken_in_the_kernel_fails_the_comparison() {
    let causal = case(2, 8, true, 61);
    let mut strict = case(2, 8, true, 61);
    strict.p.rule = WindowRule::Strict;
    assert!(error_with_rules(&causal, |_| {}) < 1e-10, "the unbroken kernel must agree");
    assert!(error_with_rules(&strict, |_| {}) < 1e-10, "the unbroken kernel must agree");
    let broken: [(&str, &Case, &RuleEdit); 5] = [
        ("causal", &causal, &|r| r.causal = 0),
        ("padding", &causal, &|r| r.real_len = 64),
        ("self", &causal, &|r| r.self_logit = 0.0),
        ("window", &causal, &|r| r.n_chunks_before = 0),
        ("strict causal", &strict, &|r| r.strict_causal = 0),
    ];
    for (rule, c, edit) in broken {
        let error = error_with_rules(c, edit);
        assert!(error > 1e-3, "breaking the {rule} rule changed the result by only {error:e}");
    }
}
