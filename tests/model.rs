//! Properties of the whole model: causality, chunking equals no chunking, local and full
//! attention against dense references, and config validation.

mod common;

use reformer::model::config::{LshConfig, WindowRule};
use reformer::model::{AttentionKind, ForwardMode, ModelConfig, PositionalConfig, ReformerLm};
use tch::{nn, Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;

fn small_config(attention: Vec<AttentionKind>) -> ModelConfig {
    ModelConfig { attention, vocab_size: ModelConfig::default().vocab_size, ..common::tiny_model_config() }
}

/// A model with random weights. Tests run in parallel threads that share libtorch's
/// global generator, so two models meant to be equal copy weights, never reseed.
fn build(cfg: &ModelConfig) -> (nn::VarStore, ReformerLm) {
    cfg.validate().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ReformerLm::new(vs.root(), cfg);
    (vs, model)
}

/// A model with the same weights as `source`.
fn build_like(cfg: &ModelConfig, source: &nn::VarStore) -> (nn::VarStore, ReformerLm) {
    let (mut vs, model) = build(cfg);
    vs.copy(source).unwrap();
    (vs, model)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn random_tokens(b: i64, t: i64) -> Tensor {
    Tensor::randint(256, [b, t], (Kind::Int64, Device::Cpu))
}

/// Changing tokens after position `cut` must leave every output at positions <= cut
/// unchanged. In float64, so that what remains is summation order (a changed future
/// reorders LSH's sorted chunks), not information.
fn assert_causal(cfg: &ModelConfig) {
    const CAUSAL_TOLERANCE: f64 = 1e-12;
    let (mut vs, model) = build(cfg);
    vs.double();
    let t = 48;
    let tokens = random_tokens(2, t);
    let cut = 29;
    let changed = tokens.copy();
    changed.narrow(1, cut + 1, t - cut - 1).copy_(&random_tokens(2, t - cut - 1));
    let mode = ForwardMode::eval(5);
    let a = model.forward(&tokens, mode).narrow(1, 0, cut + 1);
    let b = model.forward(&changed, mode).narrow(1, 0, cut + 1);
    let diff = max_abs_diff(&a, &b);
    assert!(diff <= CAUSAL_TOLERANCE, "{:?}: outputs before the change moved by {diff}", cfg.attention);
    let later = max_abs_diff(&model.forward(&tokens, mode), &model.forward(&changed, mode));
    assert!(later > 0.0, "the change should affect later positions");
}

#[test]
fn strict_causal_lsh_local_and_full_are_causal_through_the_lm() {
    let mut strict = small_config(vec![AttentionKind::Lsh]);
    strict.lsh.window = WindowRule::Strict;
    assert_causal(&strict);
    assert_causal(&small_config(vec![AttentionKind::Local]));
    assert_causal(&small_config(vec![AttentionKind::Full]));
    let mut mixed = small_config(vec![AttentionKind::Local, AttentionKind::Lsh, AttentionKind::Full]);
    mixed.lsh.window = WindowRule::Strict;
    assert_causal(&mixed);
}

#[test]
fn local_attention_with_one_chunk_equals_full_attention() {
    // With a chunk as long as the sequence, local attention is dense attention; the two
    // layers have the same parameter shapes, so copy the weights across.
    for causal in [true, false] {
        let mut local = small_config(vec![AttentionKind::Local]);
        local.causal = causal;
        local.local.chunk_len = 64;
        let mut full = local.clone();
        full.attention = vec![AttentionKind::Full];
        let (vs_local, local_model) = build(&local);
        let (_vs_full, full_model) = build_like(&full, &vs_local);
        let tokens = random_tokens(2, 40);
        let mode = ForwardMode::eval(0);
        let diff = max_abs_diff(&local_model.forward(&tokens, mode), &full_model.forward(&tokens, mode));
        assert!(diff <= TOLERANCE, "causal={causal}: {diff}");
    }
}

#[test]
fn local_attention_sees_exactly_its_window() {
    // Position p of a causal local layer with chunk C and one chunk back depends on
    // tokens from the start of the previous chunk up to p, and on nothing earlier.
    let mut cfg = small_config(vec![AttentionKind::Local]);
    cfg.n_layers = 1;
    cfg.positional = PositionalConfig::None;
    let (_vs, model) = build(&cfg);
    let tokens = random_tokens(1, 40);
    let changed = tokens.copy();
    changed.narrow(1, 0, 8).copy_(&random_tokens(1, 8)); // chunk 0
    let mode = ForwardMode::eval(0);
    let (a, b) = (model.forward(&tokens, mode), model.forward(&changed, mode));
    assert!(max_abs_diff(&a.narrow(1, 16, 24), &b.narrow(1, 16, 24)) == 0.0, "chunks 2.. must not see chunk 0");
    assert!(max_abs_diff(&a.narrow(1, 8, 8), &b.narrow(1, 8, 8)) > 0.0, "chunk 1 must see chunk 0");
}

fn loss_and_grads(cfg: &ModelConfig, source: &nn::VarStore, tokens: &Tensor, weights: &Tensor) -> (f64, Vec<Tensor>) {
    let (vs, model) = build_like(cfg, source);
    let inputs = tokens.narrow(1, 0, tokens.size()[1] - 1);
    let targets = tokens.narrow(1, 1, tokens.size()[1] - 1);
    let stats = model.loss(&inputs, &targets, Some(weights), ForwardMode::train(3));
    stats.loss.backward();
    let mut names: Vec<_> = vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    (stats.loss.double_value(&[]), names.into_iter().map(|(_, v)| v.grad().copy()).collect())
}

#[test]
fn chunked_feed_forward_and_loss_equal_unchunked_with_gradients() {
    // With dropout in the feed-forward: a chunk's mask is its share of the whole one's.
    let plain = ModelConfig { dropout_ff: 0.3, ..small_config(vec![AttentionKind::Lsh, AttentionKind::Local]) };
    let mut chunked = plain.clone();
    chunked.execution.ff_chunk_len = Some(8);
    chunked.execution.loss_chunk_len = Some(12);
    let tokens = random_tokens(2, 41);
    let weights = Tensor::rand([2, 40], (Kind::Float, Device::Cpu));
    let (source, _) = build(&plain);
    let (loss_a, grads_a) = loss_and_grads(&plain, &source, &tokens, &weights);
    let (loss_b, grads_b) = loss_and_grads(&chunked, &source, &tokens, &weights);
    assert!((loss_a - loss_b).abs() <= TOLERANCE, "loss {loss_a} vs {loss_b}");
    for (a, b) in grads_a.iter().zip(&grads_b) {
        let scale = a.abs().max().double_value(&[]).max(1e-3);
        assert!(max_abs_diff(a, b) / scale <= 1e-4, "gradient differs");
    }
}

#[test]
fn loss_weights_select_positions() {
    // A weight of zero leaves a position out: the loss equals the loss over the rest.
    let cfg = small_config(vec![AttentionKind::Local]);
    let (_vs, model) = build(&cfg);
    let tokens = random_tokens(1, 32);
    let targets = random_tokens(1, 32);
    let weights = Tensor::zeros([1, 32], (Kind::Float, Device::Cpu));
    let _ = weights.narrow(1, 16, 16).fill_(1.0);
    let mode = ForwardMode::eval(0);
    let stats = model.loss(&tokens, &targets, Some(&weights), mode);
    let log_probs = model.forward(&tokens, mode).log_softmax(-1, Kind::Float).narrow(1, 16, 16);
    let want = -log_probs.gather(-1, &targets.narrow(1, 16, 16).unsqueeze(-1), false).mean(Kind::Float);
    assert!((stats.loss.double_value(&[]) - want.double_value(&[])).abs() <= TOLERANCE);
    assert_eq!(stats.weight, 16.0);
}

#[test]
fn axial_positions_decompose() {
    // Position p's embedding is [rows[p / A2], cols[p % A2]].
    let cfg = small_config(vec![AttentionKind::Local]);
    let (vs, _model) = build(&cfg);
    let vars = vs.variables();
    let rows = &vars["positional.axial_rows"];
    let cols = &vars["positional.axial_cols"];
    let positional = reformer::model::positional::PositionalEmbedding::Axial { rows: rows.copy(), cols: cols.copy() };
    let table = positional.range(0, 61).unwrap();
    assert_eq!(table.size(), vec![61, 32]);
    for p in [0i64, 7, 8, 33, 60] {
        let want = Tensor::cat(&[rows.get(p / 8), cols.get(p % 8)], 0);
        assert!(table.get(p).equal(&want), "position {p}");
    }
    // A range that starts mid-row (incremental decoding asks for one position at a time).
    for (start, len) in [(13, 1), (13, 20), (63, 1), (8, 8)] {
        assert!(positional.range(start, len).unwrap().equal(&positional.range(0, 64).unwrap().narrow(0, start, len)));
    }
}

/// A change to a valid configuration, and words its error must contain.
type BadCase = (Box<dyn Fn(&mut ModelConfig)>, &'static str);

#[test]
fn bad_configs_say_what_to_change() {
    let cases: Vec<BadCase> = vec![
        (Box::new(|c| c.n_heads = 3), "not divisible by n_heads"),
        (Box::new(|c| c.lsh.n_buckets = Some(5)), "must be even"),
        (Box::new(|c| c.positional = PositionalConfig::Axial { shape: [4, 8], dims: [16, 16] }), "enlarge the shape"),
        (Box::new(|c| c.positional = PositionalConfig::Axial { shape: [8, 8], dims: [16, 8] }), "not d_model"),
        (Box::new(|c| c.lsh.n_chunks_after = 1), "set it to 0 for a causal model"),
        (Box::new(|c| c.dropout_hidden = 1.5), "must be in [0, 1)"),
        (Box::new(|c| c.attention.clear()), "attention is empty"),
        (
            Box::new(|c| {
                c.causal = false;
                c.lsh.window = WindowRule::Strict
            }),
            "\"strict\" needs causal",
        ),
    ];
    for (change, message) in cases {
        let mut cfg = small_config(vec![AttentionKind::Lsh]);
        change(&mut cfg);
        let err = cfg.validate().expect_err(message).to_string();
        assert!(err.contains(message), "expected '{message}' in '{err}'");
    }
}

#[test]
fn default_n_buckets_follows_the_paper() {
    let mut cfg =
        ModelConfig { max_seq_len: 1024, lsh: LshConfig { chunk_len: 64, ..Default::default() }, ..Default::default() };
    assert_eq!(cfg.n_buckets(), 32);
    cfg.max_seq_len = 100;
    assert_eq!(cfg.n_buckets() % 2, 0);
}

#[test]
fn unknown_config_fields_are_rejected() {
    let err = serde_json::from_str::<ModelConfig>(r#"{"d_modle": 64}"#).unwrap_err().to_string();
    assert!(err.contains("d_modle"), "{err}");
}

#[test]
fn changing_hash_rounds_changes_only_lsh_layers() {
    let cfg = small_config(vec![AttentionKind::Local, AttentionKind::Lsh, AttentionKind::Full]);
    let (_vs, mut model) = build(&cfg);
    let x = Tensor::randn([2, 40, 32], (Kind::Float, Device::Cpu));
    let mode = ForwardMode::eval(3);
    let before: Vec<Tensor> = model.blocks.iter().map(|b| b.f(&x, mode)).collect();
    model.set_n_hashes(5).unwrap();
    let after: Vec<Tensor> = model.blocks.iter().map(|b| b.f(&x, mode)).collect();
    assert!(before[0].equal(&after[0]), "local attention changed");
    assert!(!before[1].equal(&after[1]), "LSH attention did not change");
    assert!(before[2].equal(&after[2]), "full attention changed");
}

#[test]
fn dropout_over_rows_is_that_rows_share_of_the_whole_mask() {
    use reformer::model::seeded_random::{dropout, dropout_rows};
    let x = Tensor::ones([3, 10, 4, 5], (Kind::Float, Device::Cpu));
    let whole = dropout(&x, 0.3, 99, true);
    for (start, len) in [(0, 10), (0, 4), (4, 4), (8, 2), (7, 1)] {
        let rows = dropout_rows(&x.narrow(1, start, len), 0.3, 99, true, start, 10);
        assert!(rows.equal(&whole.narrow(1, start, len)), "rows {start}..{}", start + len);
    }
    assert!(dropout_rows(&x, 0.3, 99, false, 0, 10).equal(&x));
}

#[test]
fn scores_do_not_depend_on_the_rows_per_scoring_pass() {
    // Every sequence is scored with the same rotations whatever the rows beside it.
    let cfg = small_config(vec![AttentionKind::Lsh, AttentionKind::Local]);
    let (source, mut model) = build(&cfg);
    let tokens = random_tokens(5, 41);
    let batch = reformer::tasks::Batch {
        inputs: tokens.narrow(1, 0, 40),
        targets: tokens.narrow(1, 1, 40),
        weights: Tensor::rand([5, 40], (Kind::Float, Device::Cpu)),
    };
    let whole = reformer::score::ScoreTotals::of(&model, std::iter::once(&batch), Device::Cpu);
    model.cfg.execution.scoring_rows = Some(2);
    let in_pieces = reformer::score::ScoreTotals::of(&model, std::iter::once(&batch), Device::Cpu);
    assert!((whole.nll - in_pieces.nll).abs() <= TOLERANCE * whole.nll, "{} vs {}", whole.nll, in_pieces.nll);
    assert_eq!(whole.correct, in_pieces.correct);
    assert!((whole.n_targets - in_pieces.n_targets).abs() <= 1e-4);
    drop(source);
}
