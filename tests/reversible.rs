//! The reversible backward (paper §3) against ordinary autograd on the same weights and
//! seeds: equal gradients for every parameter and for the stack's input, equal rebuilt
//! block inputs, equal Adam steps; and errors inside the custom node come back as Err.

use std::collections::HashMap;

use reformer::model::config::{ExecutionConfig, LocalConfig, LshConfig, WindowRule};
use reformer::model::reversible::{reconstruct_inputs, reversible_blocks};
use reformer::model::seeded_random;
use reformer::model::{AttentionKind, ForwardMode, ModelConfig, PositionalConfig, ReformerLm};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// Relative error (‖a − b‖ / ‖b‖) allowed between the two backward passes: what the
/// reconstruction by subtraction costs in float32 and float64.
const F32_TOLERANCE: f64 = 1e-4;
const F64_TOLERANCE: f64 = 1e-9;
const BATCH: i64 = 2;
const SEQ_LEN: i64 = 64;
const WEIGHT_SEED: i64 = 11;
const DATA_SEED: i64 = 12;
const FORWARD_SEED: u64 = 13;
const ADAM_LEARNING_RATE: f64 = 1e-3;
/// Adam's epsilon, of the order of the gradients here: with the default 1e-8 a step is
/// nearly lr·sign(gradient), blind to a gradient counted twice and, in float32, dominated
/// by the rounding of gradients close to zero.
const ADAM_EPS: f64 = 1e-3;
const ADAM_STEPS: u64 = 2;

fn tolerance(kind: Kind) -> f64 {
    match kind {
        Kind::Double => F64_TOLERANCE,
        _ => F32_TOLERANCE,
    }
}

fn machine_epsilon(kind: Kind) -> f64 {
    match kind {
        Kind::Double => f64::EPSILON,
        _ => f32::EPSILON as f64,
    }
}

fn config(n_layers: i64, reversible: bool, ff_chunk_len: Option<i64>) -> ModelConfig {
    let cfg = ModelConfig {
        vocab_size: 32,
        d_model: 32,
        n_layers,
        n_heads: 2,
        d_ff: 64,
        dropout_hidden: 0.1,
        dropout_attention: 0.1,
        dropout_ff: 0.1,
        max_seq_len: SEQ_LEN,
        positional: PositionalConfig::Axial { shape: [8, 8], dims: [16, 16] },
        attention: vec![AttentionKind::Lsh, AttentionKind::Local, AttentionKind::Full],
        lsh: LshConfig { chunk_len: 16, ..Default::default() },
        local: LocalConfig { chunk_len: 16, ..Default::default() },
        execution: ExecutionConfig { reversible, ff_chunk_len, ..Default::default() },
        ..Default::default()
    };
    cfg.validate().unwrap();
    cfg
}

/// The same network twice, with equal weights: under ordinary autograd and reversible.
struct Pair {
    plain_vs: nn::VarStore,
    plain: ReformerLm,
    reversible_vs: nn::VarStore,
    reversible: ReformerLm,
}

fn pair(n_layers: i64, kind: Kind) -> Pair {
    pair_with(n_layers, kind, None)
}

/// The pair with the feed-forward chunked `ff_chunk_len` positions at a time.
fn pair_with(n_layers: i64, kind: Kind, ff_chunk_len: Option<i64>) -> Pair {
    tch::manual_seed(WEIGHT_SEED);
    let mut plain_vs = nn::VarStore::new(Device::Cpu);
    let plain = ReformerLm::new(plain_vs.root(), &config(n_layers, false, ff_chunk_len));
    let mut reversible_vs = nn::VarStore::new(Device::Cpu);
    let reversible = ReformerLm::new(reversible_vs.root(), &config(n_layers, true, ff_chunk_len));
    if kind == Kind::Double {
        plain_vs.double();
        reversible_vs.double();
    }
    reversible_vs.copy(&plain_vs).unwrap();
    Pair { plain_vs, plain, reversible_vs, reversible }
}

/// Token ids and next-token targets, (B, T) each. Drawn from the counter-based
/// generator, not libtorch's global one, which tests running in parallel threads share.
fn batch(vocab_size: i64) -> (Tensor, Tensor) {
    let uniform = seeded_random::uniform(DATA_SEED as u64, &[BATCH, SEQ_LEN + 1], Device::Cpu);
    let tokens = (uniform * vocab_size as f64).to_kind(Kind::Int64);
    (tokens.narrow(1, 0, SEQ_LEN), tokens.narrow(1, 1, SEQ_LEN))
}

/// Mean next-token cross-entropy computed in the model's own dtype.
fn loss(lm: &ReformerLm, tokens: &Tensor, targets: &Tensor, mode: ForwardMode) -> Tensor {
    let logits = lm.forward(tokens, mode); // (B, T, V)
    let log_probs = logits.log_softmax(-1, logits.kind());
    -log_probs.gather(-1, &targets.unsqueeze(-1), false).mean(logits.kind())
}

fn relative_error(actual: &Tensor, expected: &Tensor) -> f64 {
    let difference = (actual - expected).norm().double_value(&[]);
    difference / expected.norm().double_value(&[]).max(f64::MIN_POSITIVE)
}

fn grads(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables().into_iter().map(|(name, var)| (name, var.grad())).collect()
}

/// Every parameter's gradient, and the gradient with respect to the stack's input, agree
/// between the reversible node and ordinary autograd.
fn check_gradients(n_layers: i64, kind: Kind) {
    check_gradients_with(n_layers, kind, None);
}

fn check_gradients_with(n_layers: i64, kind: Kind, ff_chunk_len: Option<i64>) {
    let Pair { plain_vs, plain, reversible_vs, reversible } = pair_with(n_layers, kind, ff_chunk_len);
    let (tokens, targets) = batch(plain.cfg.vocab_size);
    let mode = ForwardMode::train(FORWARD_SEED);

    let plain_loss = loss(&plain, &tokens, &targets, mode);
    let reversible_loss = loss(&reversible, &tokens, &targets, mode);
    assert_eq!(plain_loss.double_value(&[]), reversible_loss.double_value(&[]), "the forward passes differ");
    plain_loss.backward();
    reversible_loss.f_backward().unwrap();

    let (expected, actual) = (grads(&plain_vs), grads(&reversible_vs));
    assert_eq!(expected.len(), actual.len());
    for (name, expected) in &expected {
        assert!(expected.defined(), "{name} got no gradient under ordinary autograd");
        assert!(actual[name].defined(), "{name} got no gradient through the reversible node");
        let error = relative_error(&actual[name], expected);
        assert!(error <= tolerance(kind), "{n_layers} layers, {kind:?}: {name} relative error {error:e}");
    }

    // The stack on its own: the gradient with respect to its input, from a loss that
    // weighs the two output streams differently.
    let x = tch::no_grad(|| plain.embed(&tokens, mode)); // (B, T, D)
    let [w1, w2] = [1, 2].map(|i| seeded_random::normal(DATA_SEED as u64 + i, &x.size(), Device::Cpu).to_kind(kind)); // (B, T, D)
    let input_grad = |lm: &ReformerLm| {
        let x = x.detach().set_requires_grad(true);
        let (y1, y2) = lm.run_blocks(&x, mode);
        (y1 * &w1 + y2 * &w2).sum(kind).backward();
        x.grad()
    };
    let error = relative_error(&input_grad(&reversible), &input_grad(&plain));
    assert!(error <= tolerance(kind), "{n_layers} layers, {kind:?}: stack input relative error {error:e}");
}

#[test]
fn gradients_match_autograd_one_layer_f32() {
    check_gradients(1, Kind::Float);
}

#[test]
fn gradients_match_autograd_six_layers_f32() {
    check_gradients(6, Kind::Float);
}

/// The reversible backward replays a chunked feed-forward one chunk at a time (dropout
/// on, and a last chunk shorter than the others).
#[test]
fn gradients_match_autograd_with_chunked_feed_forward_f32() {
    check_gradients_with(3, Kind::Float, Some(24));
}

#[test]
fn gradients_match_autograd_with_chunked_feed_forward_f64() {
    check_gradients_with(3, Kind::Double, Some(24));
}

#[test]
fn gradients_match_autograd_one_layer_f64() {
    check_gradients(1, Kind::Double);
}

#[test]
fn gradients_match_autograd_six_layers_f64() {
    check_gradients(6, Kind::Double);
}

/// The inputs that the backward rebuilds from the stack's output are those the forward
/// saw, block by block.
fn check_reconstruction(kind: Kind) {
    let Pair { plain, .. } = pair(6, kind);
    let (tokens, _) = batch(plain.cfg.vocab_size);
    let mode = ForwardMode::train(FORWARD_SEED);
    tch::no_grad(|| {
        let x = plain.embed(&tokens, mode);
        let mut inputs = Vec::new();
        let mut streams = (x.shallow_clone(), x);
        for (i, block) in plain.blocks.iter().enumerate() {
            inputs.push((streams.0.shallow_clone(), streams.1.shallow_clone()));
            streams = block.forward(&streams.0, &streams.1, mode.child(i as u64));
        }
        let rebuilt = reconstruct_inputs(&plain.blocks, &streams.0, &streams.1, mode);
        assert_eq!(rebuilt.len(), inputs.len());
        for (i, ((x1, x2), (r1, r2))) in inputs.iter().zip(&rebuilt).enumerate() {
            for (stream, expected, actual) in [(1, x1, r1), (2, x2, r2)] {
                let error = relative_error(actual, expected);
                assert!(
                    error <= tolerance(kind),
                    "{kind:?}: block {i} x{stream} rebuilt with relative error {error:e}"
                );
            }
        }
    });
}

#[test]
fn reconstructed_inputs_match_forward_f32() {
    check_reconstruction(Kind::Float);
}

#[test]
fn reconstructed_inputs_match_forward_f64() {
    check_reconstruction(Kind::Double);
}

/// Adam steps move every parameter the same way whichever backward computed the
/// gradients (`.grad` is filled once per step, and released graphs leave no state).
fn check_adam_steps(kind: Kind) {
    let Pair { plain_vs, plain, reversible_vs, reversible } = pair(6, kind);
    let (tokens, targets) = batch(plain.cfg.vocab_size);
    let before: HashMap<String, Tensor> =
        plain_vs.variables().into_iter().map(|(n, v)| (n, v.detach().copy())).collect();
    let adam = nn::Adam { eps: ADAM_EPS, ..Default::default() };
    let mut plain_adam = adam.build(&plain_vs, ADAM_LEARNING_RATE).unwrap();
    let mut reversible_adam = adam.build(&reversible_vs, ADAM_LEARNING_RATE).unwrap();
    for step in 0..ADAM_STEPS {
        let mode = ForwardMode::train(FORWARD_SEED + step);
        plain_adam.backward_step(&loss(&plain, &tokens, &targets, mode));
        reversible_adam.backward_step(&loss(&reversible, &tokens, &targets, mode));
    }
    let after = reversible_vs.variables();
    for (name, plain_after) in plain_vs.variables() {
        let expected = &plain_after - &before[&name];
        let actual = &after[&name] - &before[&name];
        // Each step rounds the parameter itself to its dtype: up to one unit in the last
        // place per step is rounding of the weights, not a difference in the gradients.
        let rounding = plain_after.abs() * (machine_epsilon(kind) * ADAM_STEPS as f64);
        let excess = ((&actual - &expected).abs() - rounding).clamp_min(0.0);
        let error = excess.norm().double_value(&[]) / expected.norm().double_value(&[]);
        assert!(error <= tolerance(kind), "{kind:?}: Adam moved {name} differently, relative error {error:e}");
    }
}

#[test]
fn adam_steps_match_autograd_f32() {
    check_adam_steps(Kind::Float);
}

#[test]
fn adam_steps_match_autograd_f64() {
    check_adam_steps(Kind::Double);
}

/// A libtorch error inside the node's forward callback is reported with its name (a
/// panic, as tch's operators report theirs), not a crash of the process.
#[test]
fn error_in_forward_is_reported_not_a_crash() {
    let Pair { reversible, .. } = pair(2, Kind::Float);
    let mode = ForwardMode::train(FORWARD_SEED);
    let x2 =
        Tensor::zeros([BATCH, SEQ_LEN, reversible.cfg.d_model], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    // x1 one column too wide: y1 = x1 + F(x2) cannot broadcast.
    let x1 = Tensor::zeros([BATCH, SEQ_LEN, reversible.cfg.d_model + 1], (Kind::Float, Device::Cpu));
    let result = std::panic::catch_unwind(|| reversible_blocks(&reversible.blocks, &x1, &x2, mode));
    let panic = result.expect_err("a shape error in the forward callback must be reported");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("reversible forward"), "unexpected message: {message}");
}

/// A libtorch error inside the node's backward callback makes `backward` return Err.
#[test]
fn error_in_backward_is_an_err() {
    let Pair { reversible_vs, reversible, .. } = pair(2, Kind::Float);
    let (tokens, targets) = batch(reversible.cfg.vocab_size);
    let loss = loss(&reversible, &tokens, &targets, ForwardMode::train(FORWARD_SEED));
    // Resizing a weight between forward and backward breaks the recomputation of G.
    let mut weight = reversible_vs.variables()["layers.1.ff.up.weight"].shallow_clone();
    tch::no_grad(|| weight.set_data(&Tensor::zeros([3, 3], (Kind::Float, Device::Cpu))));
    let message = loss.f_backward().expect_err("a shape error in the backward callback must be an Err").to_string();
    assert!(message.contains("reversible backward"), "unexpected message: {message}");
}

/// Each block lists, once, exactly the variables stored under its path: the reversible
/// node returns gradients for those and no others.
#[test]
fn blocks_list_exactly_their_variables() {
    let Pair { reversible_vs, reversible, .. } = pair(3, Kind::Float);
    let variables = reversible_vs.variables();
    for (i, block) in reversible.blocks.iter().enumerate() {
        let prefix = format!("layers.{i}.");
        let mut stored: Vec<usize> = variables
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(_, t)| t.data_ptr() as usize)
            .collect();
        let mut listed: Vec<usize> = block.parameters().iter().map(|t| t.data_ptr() as usize).collect();
        stored.sort_unstable();
        listed.sort_unstable();
        assert!(!listed.is_empty());
        assert_eq!(listed, stored, "block {i} lists other tensors than its variables");
    }
}

/// The gradients of every trainable variable, copied.
fn gradients(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables().into_iter().map(|(name, t)| (name, t.grad().copy())).collect()
}

/// The graph of a reversible forward owns the blocks its backward replays: while it
/// lives, the model's setters refuse to change them (a changed hash setting would make
/// the backward differentiate another function); after it is freed they work; and the
/// backward gives the same gradients when the model itself was dropped in between.
#[test]
fn the_graph_owns_the_blocks_it_replays() {
    let Pair { reversible_vs, mut reversible, .. } = pair(2, Kind::Double);
    let (tokens, targets) = batch(reversible.cfg.vocab_size);
    let mode = ForwardMode::train(FORWARD_SEED);
    let trained_rounds = reversible.cfg.lsh.n_hashes;

    let kept = loss(&reversible, &tokens, &targets, mode);
    let refused = reversible.set_n_hashes(trained_rounds + 1).expect_err("blocks held by a graph must not change");
    assert!(refused.to_string().contains("held by the graph"), "{refused}");
    assert!(reversible.set_window_rule(WindowRule::Strict).is_err());
    assert!(reversible.use_dense_lsh(SEQ_LEN).is_err());
    kept.backward();
    let expected = gradients(&reversible_vs);
    drop(kept);
    reversible.set_n_hashes(trained_rounds + 1).expect("the graph is freed");
    reversible.set_n_hashes(trained_rounds).unwrap();

    for (_, mut t) in reversible_vs.variables() {
        t.zero_grad();
    }
    let orphaned = loss(&reversible, &tokens, &targets, mode);
    drop(reversible);
    orphaned.backward();
    for (name, grad) in gradients(&reversible_vs) {
        assert!(grad.defined(), "{name} has no gradient after the model was dropped");
        assert_eq!(max_abs_diff(&grad, &expected[&name]), 0.0, "{name}");
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Relative gradient error allowed between the reversible and the ordinary backward under
/// bfloat16 autocast. Both differentiate the same bfloat16 forward; the rebuilt inputs
/// differ from the forward's by float32 rounding only. Measured at 6 layers: 1.5e-7 when
/// the replay runs under the forward's autocast state, 3.3e-2 when it runs in float32
/// (the replay outside the forward's autocast scope).
const BF16_TOLERANCE: f64 = 1e-4;

/// Under bfloat16 autocast the reversible backward replays F and G as the forward ran
/// them (bfloat16 matmuls, the forward's LSH buckets), although `backward` is called
/// outside the autocast scope: its gradients equal ordinary autograd's under the same
/// autocast.
#[test]
fn gradients_match_autograd_under_bf16_autocast() {
    use reformer::precision::Precision;
    let Pair { plain_vs, plain, reversible_vs, reversible } = pair(6, Kind::Float);
    let (tokens, targets) = batch(plain.cfg.vocab_size);
    let mode = ForwardMode::train(FORWARD_SEED);
    let bf16_loss = |lm: &ReformerLm| {
        Precision::Bf16
            .autocast(Device::Cpu, || {
                let log_probs = lm.forward(&tokens, mode).log_softmax(-1, Kind::Float); // (B, T, V)
                -log_probs.gather(-1, &targets.unsqueeze(-1), false).mean(Kind::Float)
            })
            .unwrap()
    };
    let (plain_loss, reversible_loss) = (bf16_loss(&plain), bf16_loss(&reversible));
    assert_eq!(plain_loss.double_value(&[]), reversible_loss.double_value(&[]), "the forward passes differ");
    let float32_loss = loss(&plain, &tokens, &targets, mode).double_value(&[]);
    assert_ne!(plain_loss.double_value(&[]), float32_loss, "autocast did not run");
    plain_loss.backward();
    reversible_loss.f_backward().unwrap();
    let (expected, actual) = (grads(&plain_vs), grads(&reversible_vs));
    for (name, expected) in &expected {
        let error = relative_error(&actual[name], expected);
        assert!(error <= BF16_TOLERANCE, "{name} relative error {error:e}");
    }
}
