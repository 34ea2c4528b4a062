//! Incremental decoding against the full forward pass: for full, local and strict-causal
//! LSH attention (and a mix), every token fed through the cache gives the logits the
//! full forward pass gives at that position; LSH layers trained with the paper's rule
//! decode under the strict rule.

mod common;

use reformer::model::attention::lsh_decoding::BucketRings;
use reformer::model::config::WindowRule;
use reformer::model::decoding::check_decodable;
use reformer::model::{seeded_random, AttentionKind, Decoder, ForwardMode, ModelConfig, ReformerLm};
use tch::{nn, Device, Kind, Tensor};

const LOGIT_TOLERANCE: f64 = 1e-4;
const SEED: u64 = 7;
const WEIGHT_SEED: u64 = 1_000;

fn config(attention: Vec<AttentionKind>, strict: bool) -> ModelConfig {
    let mut cfg = ModelConfig { attention, ..common::tiny_model_config() };
    // Four buckets of at most four recent keys: with 60 tokens every list overflows.
    cfg.lsh.chunk_len = 4;
    cfg.lsh.n_buckets = Some(4);
    cfg.lsh.n_hashes = 3;
    cfg.lsh.window = if strict { WindowRule::Strict } else { WindowRule::Paper };
    cfg
}

/// A model with random weights drawn from `WEIGHT_SEED` (not libtorch's global
/// generator, which tests running in parallel threads share), so that every run checks
/// the same models: matrices N(0, 1/fan_in), biases N(0, 0.01), norms as initialised.
fn build(cfg: &ModelConfig) -> (nn::VarStore, ReformerLm) {
    cfg.validate().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ReformerLm::new(vs.root(), cfg);
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (i, (name, variable)) in variables.iter_mut().enumerate() {
            let size = variable.size();
            let scale = match size.as_slice() {
                [_, fan_in] => (*fan_in as f64).powf(-0.5),
                _ if name.contains("norm") => continue,
                _ => 0.1,
            };
            variable.copy_(&(seeded_random::normal(WEIGHT_SEED + i as u64, &size, Device::Cpu) * scale));
        }
    });
    (vs, model)
}

/// Feeds `tokens` through the cache after a `prompt_len`-token prefill and checks each
/// position's logits against `reference`'s full forward pass over the same tokens.
fn assert_decoding_matches(model: &ReformerLm, reference: &ReformerLm, tokens: &Tensor, prompt_len: i64) {
    let mode = ForwardMode::eval(SEED);
    let t = tokens.size()[1];
    let full = tch::no_grad(|| reference.forward(tokens, mode)); // (B, T, V)
    let (mut decoder, first) = Decoder::prefill(model, &tokens.narrow(1, 0, prompt_len), mode).unwrap();
    let mut worst: f64 = (&first - full.select(1, prompt_len - 1)).abs().max().double_value(&[]);
    for position in prompt_len..t {
        let logits = decoder.step(&tokens.narrow(1, position, 1)); // (B, V)
        let expected = full.select(1, position); // (B, V)
        let diff = (&logits - &expected).abs().max().double_value(&[]);
        worst = worst.max(diff);
        assert!(diff <= LOGIT_TOLERANCE, "position {position}: cached logits differ by {diff}");
        assert_eq!(
            Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap(),
            Vec::<i64>::try_from(expected.argmax(-1, false)).unwrap(),
            "position {position}: the greedy token differs"
        );
    }
    assert_eq!(decoder.len(), t);
    assert!(worst.is_finite());
}

/// Tokens drawn from `seed` (see `build`).
fn random_tokens(seed: u64, b: i64, t: i64) -> Tensor {
    (seeded_random::uniform(seed, &[b, t], Device::Cpu) * 32.0).floor().to_kind(Kind::Int64)
}

fn assert_exact(attention: Vec<AttentionKind>) {
    let cfg = config(attention, true);
    let (_vs, model) = build(&cfg);
    assert_decoding_matches(&model, &model, &random_tokens(1, 2, 60), 5);
}

#[test]
fn full_attention_decodes_exactly() {
    assert_exact(vec![AttentionKind::Full]);
}

#[test]
fn local_attention_decodes_exactly_across_chunk_boundaries() {
    assert_exact(vec![AttentionKind::Local]);
}

#[test]
fn strict_lsh_attention_decodes_exactly_with_overflowing_buckets() {
    assert_exact(vec![AttentionKind::Lsh]);
}

#[test]
fn a_mixed_stack_decodes_exactly() {
    assert_exact(vec![AttentionKind::Local, AttentionKind::Lsh, AttentionKind::Full]);
}

#[test]
fn a_one_token_prompt_and_a_prompt_of_the_whole_window_decode() {
    let cfg = config(vec![AttentionKind::Lsh, AttentionKind::Local], true);
    let (_vs, model) = build(&cfg);
    assert_decoding_matches(&model, &model, &random_tokens(2, 1, 40), 1);
    let tokens = random_tokens(3, 1, 64);
    let (decoder, logits) = Decoder::prefill(&model, &tokens, ForwardMode::eval(SEED)).unwrap();
    assert!(decoder.is_full());
    assert_eq!(logits.size(), [1, 32]);
    assert!(Decoder::prefill(&model, &random_tokens(4, 1, 65), ForwardMode::eval(SEED)).is_err());
}

#[test]
fn paper_rule_lsh_decodes_as_the_strict_rule() {
    let paper = config(vec![AttentionKind::Lsh], false);
    let (vs, model) = build(&paper);
    let mut strict_vs = nn::VarStore::new(Device::Cpu);
    let strict = ReformerLm::new(strict_vs.root(), &config(vec![AttentionKind::Lsh], true));
    strict_vs.copy(&vs).unwrap();
    let tokens = random_tokens(5, 2, 60);
    assert_decoding_matches(&model, &strict, &tokens, 5);

    // And the paper's rule is a different model: the full passes disagree somewhere.
    let mode = ForwardMode::eval(SEED);
    let gap = tch::no_grad(|| (model.forward(&tokens, mode) - strict.forward(&tokens, mode)).abs().max());
    assert!(gap.double_value(&[]) > 1e-3, "the two rules gave the same logits: the test proves nothing");
}

#[test]
fn models_that_cannot_decode_incrementally_say_why() {
    let mut cfg = config(vec![AttentionKind::Full], false);
    cfg.causal = false;
    assert!(check_decodable(&cfg).unwrap_err().to_string().contains("causal"));
    let mut cfg = config(vec![AttentionKind::Lsh], false);
    cfg.lsh.n_chunks_before = 0;
    assert!(check_decodable(&cfg).unwrap_err().to_string().contains("--no-cache"));
}

#[test]
fn bucket_rings_keep_the_most_recent_positions_of_each_bucket() {
    // One stream; buckets of positions 0..7: 1 0 1 1 0 1 1 1.
    let buckets = Tensor::from_slice(&[1i64, 0, 1, 1, 0, 1, 1, 1]).view([1, 1, 1, 8]);
    let mut rings = BucketRings::from_buckets(&buckets, 3, 2);
    let sorted = |slots: &[i64]| {
        let mut v = slots.to_vec();
        v.sort();
        v
    };
    assert_eq!(sorted(rings.recent(0, 0)), vec![-1, 1, 4]);
    assert_eq!(sorted(rings.recent(0, 1)), vec![5, 6, 7]);
    rings.insert(0, 0, 8);
    rings.insert(0, 0, 9);
    assert_eq!(sorted(rings.recent(0, 0)), vec![4, 8, 9]);
}
