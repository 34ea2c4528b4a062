//! A predicted peak memory for a bench case, from its shapes alone, so that a case that
//! cannot fit is reported instead of allocated. The estimate is meant to err high; the
//! per-token constants were read off measured peaks on CPU (float32, `docs/bench-cpu.md`
//! compares predicted and measured) and are documented term by term below.

use crate::model::{AttentionKind, ModelConfig, PositionalConfig};

use super::case::{Case, CaseKind};

const FLOAT_BYTES: f64 = 4.0;
/// Bytes per parameter in a training step: weight, gradient and AdamW's two moments.
const STEP_BYTES_PER_PARAMETER: f64 = 4.0 * FLOAT_BYTES;
/// Bytes per parameter of a lone layer's forward + backward: weight and gradient.
const LAYER_BYTES_PER_PARAMETER: f64 = 2.0 * FLOAT_BYTES;
/// Floats per token per (head · key) that one LSH round keeps for backward (logits,
/// probabilities, masks, sorted and neighbour-gathered keys and values), and the peak
/// while that layer runs backward (gradients of the same tensors on top).
const LSH_KEPT_PER_KEY: f64 = 8.0;
const LSH_PEAK_PER_KEY: f64 = 13.0;
/// Through the fused kernel nothing per window key exists: per token per (head · round ·
/// (head width + 1)), kept for backward and again at its peak (read off the attention
/// suite's measured peaks at 64K, 1 to 8 rounds: about 4 in all).
const FUSED_LSH_PER_ROUND_OUTPUT: f64 = 2.0;
/// The same for local attention's (head · window key) tensors.
const LOCAL_KEPT_PER_KEY: f64 = 4.0;
const LOCAL_PEAK_PER_KEY: f64 = 7.0;
/// Full attention without dropout runs fused (nothing T²); with dropout in training the
/// explicit path keeps logits, probabilities and mask (T² per head) and doubles them
/// in backward.
const EXPLICIT_KEPT_PER_KEY: f64 = 3.0;
const EXPLICIT_PEAK_PER_KEY: f64 = 6.0;
/// Floats per token per model width kept by one block outside attention's core (norms,
/// projections, residual sums) and per feed-forward width (up projection, activation,
/// its input).
const BLOCK_KEPT_PER_WIDTH: f64 = 12.0;
const BLOCK_KEPT_PER_FF_WIDTH: f64 = 3.0;
/// What ordinary residual layers keep for the backward, as a share of the per-layer
/// figures above (which are a reversible layer's recomputation, with its gradients
/// beside it): fitted to the ordinary-residual steps among the 120 measured plans of
/// two presets (`docs/memory-plan-cpu.md`).
const ORDINARY_KEPT_SHARE: f64 = 0.75;
/// (B, T, D) tensors alive around the stack: embedding, the two streams, their gradients.
const STREAM_TENSORS: f64 = 6.0;
/// (B, T_chunk, V) tensors of the loss: logits, log-probabilities, their gradient.
const LOSS_TENSORS: f64 = 3.0;
/// Working memory of any case whatever its size (libtorch's thread pools and kernel
/// workspaces): what a one-layer case at T = 1024 measures beyond its tensors.
const CASE_OVERHEAD_BYTES: f64 = 32.0 * 1024.0 * 1024.0;

/// Parameters of the model `cfg` (of one attention layer for `CaseKind::Layer`),
/// counted in floating point so that no product of sizes can overflow.
pub fn parameters(cfg: &ModelConfig, kind: CaseKind) -> f64 {
    let size = |x: i64| x as f64;
    let (d, inner, d_ff, vocab) =
        (size(cfg.d_model), size(cfg.n_heads) * size(cfg.d_head()), size(cfg.d_ff), size(cfg.vocab_size));
    let attention = |kind: AttentionKind| -> f64 {
        let input_matrices = if kind == AttentionKind::Lsh { 2.0 } else { 3.0 };
        input_matrices * d * inner + inner * d + d
    };
    if kind == CaseKind::Layer {
        return attention(cfg.attention[0]);
    }
    let block = |kind: AttentionKind| 4.0 * d + attention(kind) + d * d_ff + d_ff + d_ff * d + d;
    let positional = match &cfg.positional {
        PositionalConfig::Axial { shape, dims } => size(shape[0]) * size(dims[0]) + size(shape[1]) * size(dims[1]),
        PositionalConfig::Learned => size(cfg.max_seq_len) * d,
        PositionalConfig::None => 0.0,
    };
    let blocks: f64 = (0..cfg.n_layers).map(|i| block(cfg.attention_of_layer(i))).sum();
    vocab * d + positional + blocks + 4.0 * d + 2.0 * d * vocab + vocab
}

/// Refuses, before anything is allocated, a model whose float32 parameters, twice over
/// (the model and the weights read into it), exceed the memory this machine has
/// available: a giant size in a config file would otherwise fill the memory until the
/// kernel kills the process without a message.
pub fn check_parameters_fit(cfg: &ModelConfig) -> anyhow::Result<()> {
    let params = parameters(cfg, CaseKind::Step);
    let needed = 2.0 * params * FLOAT_BYTES;
    if let Some(available) = available_bytes() {
        if needed > available {
            anyhow::bail!(
                "this model has {params:.3e} parameters, {:.1} GiB in float32 ({:.1} GiB while its weights load): more than the {:.1} GiB available",
                needed / 2.0 / GIB,
                needed / GIB,
                available / GIB
            );
        }
    }
    Ok(())
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Floats per token per (head · round · head width) that sliced LSH attention keeps
/// across its slices: each round's output and log-sum-exp, and their weighted copies
/// when the rounds are combined.
const SLICED_ROUND_OUTPUT_COPIES: f64 = 2.0;

/// Floats per token that a layer of `kind` keeps for backward, and its peak in backward.
/// With sliced attention only one slice's (head · round for LSH, head for local)
/// attention tensors exist at once, kept and peak together, beside the rounds' outputs.
fn attention_floats(cfg: &ModelConfig, kind: AttentionKind, seq_len: i64, train: bool, fused: bool) -> (f64, f64) {
    let heads = cfg.n_heads as f64;
    match kind {
        AttentionKind::Lsh if fused => {
            // Per (head, round): the rounds' outputs and log-sum-exps, kept, and in backward
            // their gradients and the kernel's contiguous copy of them.
            let round_outputs = cfg.lsh.n_hashes as f64 * (cfg.d_head() + 1) as f64;
            if cfg.execution.sliced_attention {
                let kept = heads * round_outputs;
                (kept, kept + FUSED_LSH_PER_ROUND_OUTPUT * round_outputs)
            } else {
                (FUSED_LSH_PER_ROUND_OUTPUT * heads * round_outputs, FUSED_LSH_PER_ROUND_OUTPUT * heads * round_outputs)
            }
        }
        AttentionKind::Lsh => {
            let window = ((1 + cfg.lsh.n_chunks_before + cfg.lsh.n_chunks_after) * cfg.lsh.chunk_len) as f64;
            let rounds = cfg.lsh.n_hashes as f64;
            if cfg.execution.sliced_attention {
                let outputs = SLICED_ROUND_OUTPUT_COPIES * heads * rounds * (cfg.d_head() + 1) as f64;
                (outputs, (LSH_KEPT_PER_KEY + LSH_PEAK_PER_KEY) * window + outputs)
            } else {
                let keys = heads * rounds * window;
                (LSH_KEPT_PER_KEY * keys, LSH_PEAK_PER_KEY * keys)
            }
        }
        AttentionKind::Local if !(train && cfg.dropout_attention > 0.0) => {
            // Fused (scaled_dot_product_attention): nothing per window key, only the
            // queries, the outputs and the windows' keys and values.
            let window_chunks = (1 + cfg.local.n_chunks_before + cfg.local.n_chunks_after) as f64;
            let kept = heads * cfg.d_head() as f64 * (2.0 * window_chunks + 2.0);
            if cfg.execution.sliced_attention {
                (0.0, kept / heads * 2.0)
            } else {
                (kept, kept)
            }
        }
        AttentionKind::Local => {
            let window = ((1 + cfg.local.n_chunks_before + cfg.local.n_chunks_after) * cfg.local.chunk_len) as f64;
            if cfg.execution.sliced_attention {
                (0.0, (LOCAL_KEPT_PER_KEY + LOCAL_PEAK_PER_KEY) * window)
            } else {
                (LOCAL_KEPT_PER_KEY * heads * window, LOCAL_PEAK_PER_KEY * heads * window)
            }
        }
        AttentionKind::Full if train && cfg.dropout_attention > 0.0 => {
            let keys = heads * seq_len as f64;
            (EXPLICIT_KEPT_PER_KEY * keys, EXPLICIT_PEAK_PER_KEY * keys)
        }
        AttentionKind::Full => (0.0, 0.0),
    }
}

/// Bytes of the fused LSH kernel's scratch (`csrc/lsh_window_attention.cpp`): each
/// thread holds one block's buffers, (3·C·W + 6·W·Dh + 3·C·Dh) floats and C·W bytes,
/// whatever the length, batch and heads. The backward adds into the gradients in
/// place, phase by phase, so nothing of size N·T is kept per thread.
pub fn fused_lsh_scratch_bytes(cfg: &ModelConfig, threads: usize) -> f64 {
    let (c, dh) = (cfg.lsh.chunk_len as f64, cfg.d_head() as f64);
    let w = (1 + cfg.lsh.n_chunks_before + cfg.lsh.n_chunks_after) as f64 * c;
    threads as f64 * ((3.0 * c * w + 6.0 * w * dh + 3.0 * c * dh) * FLOAT_BYTES + c * w)
}

/// Bytes per recorded LSH bucket (int32) on a forward's bucket tape.
const BUCKET_BYTES: f64 = 4.0;

/// Bytes per token that the bucket tape keeps for the replays (reversible backward,
/// sliced attention): one int32 bucket per (head, round) of every LSH layer, for the
/// graph's lifetime. None is kept without a replay.
pub fn bucket_tape_bytes_per_token(cfg: &ModelConfig) -> f64 {
    if !(cfg.execution.reversible || cfg.execution.sliced_attention) {
        return 0.0;
    }
    BUCKET_BYTES * (cfg.n_lsh_layers() * cfg.n_heads * cfg.lsh.n_hashes) as f64
}

/// A predicted peak, term by term (bytes), in the order `reformer bench --explain`
/// lists them.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemoryBreakdown {
    /// libtorch's thread pools and kernel workspaces (`CASE_OVERHEAD_BYTES`).
    pub libtorch_overhead: f64,
    pub parameters: f64,
    pub gradients: f64,
    /// AdamW's two moments (training steps only).
    pub optimizer_state: f64,
    /// What the layers keep for the backward: every layer's, or one layer's under
    /// reversible layers; plus the LSH buckets the replays read.
    pub kept_activations: f64,
    /// The largest layer's working set while it runs its backward, and the fused LSH
    /// kernel's per-thread buffers.
    pub attention_working_set: f64,
    /// The embedding and the two residual streams with their gradients.
    pub streams: f64,
    /// Logits, log-probabilities and their gradient, per loss chunk.
    pub loss: f64,
}

impl MemoryBreakdown {
    /// The predicted peak: the sum of the terms.
    pub fn total(&self) -> f64 {
        self.terms().iter().map(|(_, bytes)| bytes).sum()
    }

    /// (name, bytes) of each term.
    pub fn terms(&self) -> [(&'static str, f64); 8] {
        [
            ("libtorch overhead", self.libtorch_overhead),
            ("parameters", self.parameters),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer_state),
            ("kept activations", self.kept_activations),
            ("attention working set", self.attention_working_set),
            ("residual streams", self.streams),
            ("loss", self.loss),
        ]
    }
}

/// Predicted peak bytes of `case`, its LSH layers through the fused kernel when `fused`
/// (`Case::lsh_path`): the sum of `breakdown`'s terms.
pub fn predicted_bytes(case: &Case, fused: bool) -> f64 {
    breakdown(case, fused).total()
}

/// The predicted peak of `case` by term: a fixed working overhead + parameters (with
/// gradients, and AdamW's moments for a training step) + per token: what every layer
/// keeps for backward (one layer's worth under reversible layers, which keep none between
/// blocks) + the largest layer's backward peak + the residual streams + the loss's logits
/// per loss chunk + the LSH buckets kept for the replays + the fused LSH kernel's
/// per-thread scratch.
pub fn breakdown(case: &Case, fused: bool) -> MemoryBreakdown {
    let cfg = &case.model;
    let has_lsh = cfg.n_lsh_layers() > 0;
    let kernel_scratch = if has_lsh && cfg.execution.fused_lsh {
        fused_lsh_scratch_bytes(cfg, tch::get_num_threads().max(1) as usize)
    } else {
        0.0
    };
    let tokens = (case.pass_rows() * case.seq_len) as f64;
    let (d, d_ff) = (cfg.d_model as f64, cfg.d_ff as f64);
    let parameters = parameters(cfg, case.kind) * FLOAT_BYTES;
    match case.kind {
        CaseKind::Layer => {
            let (kept, peak) = attention_floats(cfg, case.attention(), case.seq_len, true, fused);
            MemoryBreakdown {
                libtorch_overhead: CASE_OVERHEAD_BYTES,
                parameters,
                gradients: parameters * (LAYER_BYTES_PER_PARAMETER / FLOAT_BYTES - 1.0),
                kept_activations: tokens * FLOAT_BYTES * (kept + BLOCK_KEPT_PER_WIDTH * d),
                attention_working_set: tokens * FLOAT_BYTES * peak + kernel_scratch,
                ..MemoryBreakdown::default()
            }
        }
        CaseKind::Step => {
            // Feed-forward chunks are not credited: measured, a reversible step peaks where
            // it does without them on `duplication-4k` and `enwik8-cpu`, and the planned
            // `enwik8-paper` step at 16K with chunks of 256 peaked 0.75 GiB above a
            // prediction that credited them (`docs/memory-plan-cpu.md`).
            let layers: Vec<(f64, f64)> = (0..cfg.n_layers)
                .map(|i| {
                    let (kept, peak) = attention_floats(cfg, cfg.attention_of_layer(i), case.seq_len, true, fused);
                    (kept + BLOCK_KEPT_PER_WIDTH * d + BLOCK_KEPT_PER_FF_WIDTH * d_ff, peak)
                })
                .collect();
            let kept_total: f64 = layers.iter().map(|l| l.0).sum();
            let kept_max = layers.iter().map(|l| l.0).fold(0.0, f64::max);
            let peak_max = layers.iter().map(|l| l.1).fold(0.0, f64::max);
            let kept = if cfg.execution.reversible { kept_max } else { ORDINARY_KEPT_SHARE * kept_total };
            let loss_len = cfg.execution.loss_chunk(case.seq_len) as f64;
            MemoryBreakdown {
                libtorch_overhead: CASE_OVERHEAD_BYTES,
                parameters,
                gradients: parameters,
                optimizer_state: parameters * (STEP_BYTES_PER_PARAMETER / FLOAT_BYTES - 2.0),
                kept_activations: tokens * (FLOAT_BYTES * kept + bucket_tape_bytes_per_token(cfg)),
                attention_working_set: tokens * FLOAT_BYTES * peak_max + kernel_scratch,
                streams: tokens * FLOAT_BYTES * STREAM_TENSORS * d,
                loss: FLOAT_BYTES * LOSS_TENSORS * case.pass_rows() as f64 * loss_len * cfg.vocab_size as f64,
            }
        }
    }
}

/// The predicted peak of scoring `rows` sequences of `seq_len` tokens without gradients
/// (validation, test, `reformer eval`), `execution.scoring_rows` at a time, beside the
/// weights, and with `with_training_state` their gradients and AdamW's moments as a
/// training run holds them: one layer's forward working set at a time, the streams, and
/// the loss's logits per chunk.
pub fn scoring_breakdown(
    cfg: &ModelConfig,
    rows: i64,
    seq_len: i64,
    fused: bool,
    with_training_state: bool,
) -> MemoryBreakdown {
    let rows = cfg.execution.scoring_pass_rows(rows) as f64;
    let tokens = rows * seq_len as f64;
    let (d, d_ff) = (cfg.d_model as f64, cfg.d_ff as f64);
    let ff_len = cfg.execution.ff_chunk(seq_len) as f64;
    let layer_floats = (0..cfg.n_layers)
        .map(|i| attention_floats(cfg, cfg.attention_of_layer(i), seq_len, false, fused).0)
        .fold(0.0, f64::max);
    let parameters = parameters(cfg, CaseKind::Step) * FLOAT_BYTES;
    let loss_len = cfg.execution.loss_chunk(seq_len) as f64;
    let training_state = if with_training_state { 1.0 } else { 0.0 };
    MemoryBreakdown {
        libtorch_overhead: CASE_OVERHEAD_BYTES,
        parameters,
        gradients: training_state * parameters,
        optimizer_state: training_state * parameters * (STEP_BYTES_PER_PARAMETER / FLOAT_BYTES - 2.0),
        kept_activations: 0.0,
        attention_working_set: FLOAT_BYTES
            * (tokens * (layer_floats + BLOCK_KEPT_PER_WIDTH * d) + rows * ff_len * d_ff),
        streams: tokens * FLOAT_BYTES * SCORING_STREAM_TENSORS * d,
        loss: FLOAT_BYTES * SCORING_LOSS_TENSORS * rows * loss_len * cfg.vocab_size as f64,
    }
}

/// (B, T, D) tensors alive while scoring: the embedding and the two streams.
const SCORING_STREAM_TENSORS: f64 = 3.0;
/// (B, T_chunk, V) tensors of the scoring loss: logits and log-probabilities.
const SCORING_LOSS_TENSORS: f64 = 2.0;

/// Memory this machine can still give a process on the CPU, in bytes (`MemAvailable`);
/// on CUDA the bench asks the driver for the device's free memory instead.
pub fn available_bytes() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}
