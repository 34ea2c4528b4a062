//! A predicted training-step time for a model and its execution settings, beside the
//! memory model, so that the planner can rank the plans that fit: arithmetic at a
//! device's rate plus a fixed cost per libtorch call, counting what each mechanism adds
//! (reversible layers recompute every block's forward in the backward, sliced attention
//! recomputes each slice's forward and calls per slice, chunks and micro-batches call
//! once per piece).

use tch::Device;

use crate::model::{AttentionKind, ModelConfig};

/// Forward FLOPs per token of one training sequence of the model, by part: 2 per weight
/// per token in every matmul with a weight, and attention's two matmuls (logits,
/// weighted values), each 2·keys·Dh per head: keys = W·R for LSH (W = (before + 1 +
/// after)·chunk_len), W for local, T/2 for causal full attention.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ForwardFlops {
    /// The blocks' attention projections (query/key, value, output).
    pub projections: f64,
    /// The blocks' attention logits and weighted values.
    pub attention_core: f64,
    /// The blocks' feed-forwards.
    pub feed_forward: f64,
    /// The output layer.
    pub output: f64,
}

impl ForwardFlops {
    pub fn of(cfg: &ModelConfig, seq_len: i64) -> Self {
        let mut flops = Self { output: 2.0 * cfg.d_model as f64 * cfg.vocab_size as f64, ..Self::default() };
        for i in 0..cfg.n_layers {
            let kind = cfg.attention_of_layer(i);
            flops.projections += projection_flops(cfg, kind);
            flops.attention_core += attention_core_flops(cfg, kind, seq_len);
            flops.feed_forward += 2.0 * 2.0 * cfg.d_model as f64 * cfg.d_ff as f64;
        }
        flops
    }

    /// The blocks' share: what a reversible backward computes once more.
    pub fn blocks(&self) -> f64 {
        self.projections + self.attention_core + self.feed_forward
    }

    pub fn total(&self) -> f64 {
        self.blocks() + self.output
    }
}

/// Forward FLOPs per token of one attention layer's projections.
pub fn projection_flops(cfg: &ModelConfig, kind: AttentionKind) -> f64 {
    let (d, inner) = (cfg.d_model as f64, (cfg.n_heads * cfg.d_head()) as f64);
    let n_matrices = if kind == AttentionKind::Lsh { 3.0 } else { 4.0 };
    2.0 * n_matrices * d * inner
}

/// Forward FLOPs per token of one attention layer's logits and weighted values.
pub fn attention_core_flops(cfg: &ModelConfig, kind: AttentionKind, seq_len: i64) -> f64 {
    let keys = match kind {
        AttentionKind::Lsh => {
            ((1 + cfg.lsh.n_chunks_before + cfg.lsh.n_chunks_after) * cfg.lsh.chunk_len * cfg.lsh.n_hashes) as f64
        }
        AttentionKind::Local => {
            ((1 + cfg.local.n_chunks_before + cfg.local.n_chunks_after) * cfg.local.chunk_len) as f64
        }
        AttentionKind::Full => seq_len as f64 / if cfg.causal { 2.0 } else { 1.0 },
    };
    2.0 * 2.0 * keys * cfg.d_head() as f64 * cfg.n_heads as f64
}

/// libtorch calls per layer per forward and backward (norms, projections, hashing,
/// sorting, the attention core, the feed-forward, residual sums, their gradients).
const CALLS_PER_LAYER: f64 = 120.0;
/// Calls per attention slice (one (head, round) of LSH, one head of local attention)
/// under sliced attention: its forward, its recomputation and its backward.
const CALLS_PER_SLICE: f64 = 60.0;
/// Calls per feed-forward chunk (forward, backward, and the reversible recomputation).
const CALLS_PER_FF_CHUNK: f64 = 12.0;
/// Calls per loss chunk (output layer, log-softmax, gather, their gradients).
const CALLS_PER_LOSS_CHUNK: f64 = 15.0;
/// Calls per pass besides the layers (embedding, positions, the loss's sums).
const CALLS_PER_PASS: f64 = 40.0;

/// A device's arithmetic rate and cost per call, for training steps in float32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepTimeModel {
    pub flops_per_sec: f64,
    pub secs_per_call: f64,
}

impl StepTimeModel {
    /// The rates of `device`: on the CPU per thread as fitted to training steps measured
    /// on a 2-core AVX-512 machine (`docs/memory-plan-cpu.md`), scaled by libtorch's
    /// threads; on CUDA an H100-class float32 rate (not fitted: it ranks the plans, the
    /// absolute seconds are rough).
    pub fn for_device(device: Device) -> Self {
        match device {
            Device::Cuda(_) => Self { flops_per_sec: 20e12, secs_per_call: 10e-6 },
            _ => {
                let threads = tch::get_num_threads().max(1) as f64;
                Self { flops_per_sec: CPU_FLOPS_PER_THREAD * threads, secs_per_call: CPU_SECS_PER_CALL }
            }
        }
    }

    /// Predicted seconds of one training step of `batch_rows` sequences of `seq_len`
    /// tokens (forward, backward and the update) with `cfg.execution`'s settings.
    pub fn step_secs(&self, cfg: &ModelConfig, batch_rows: i64, seq_len: i64) -> f64 {
        self.secs(StepWork::of(cfg, batch_rows, seq_len))
    }

    /// Predicted seconds of `work`.
    pub fn secs(&self, work: StepWork) -> f64 {
        work.flops / self.flops_per_sec + work.calls * self.secs_per_call
    }
}

/// What one training step computes, as the step-time model counts it: arithmetic, and
/// libtorch calls (each with a fixed cost whatever its size).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepWork {
    pub flops: f64,
    pub calls: f64,
}

impl StepWork {
    /// One training step of `batch_rows` sequences of `seq_len` tokens with
    /// `cfg.execution`'s settings: forward and backward (3 forwards' arithmetic), a
    /// reversible backward's recomputed blocks, sliced attention's recomputed attention
    /// core; the calls of every pass (micro-batch), per layer, per attention slice, per
    /// feed-forward and loss chunk.
    pub fn of(cfg: &ModelConfig, batch_rows: i64, seq_len: i64) -> Self {
        let execution = &cfg.execution;
        let flops = ForwardFlops::of(cfg, seq_len);
        let tokens = (batch_rows * seq_len) as f64;
        let mut per_token = 3.0 * flops.total();
        if execution.reversible {
            per_token += flops.blocks();
        }
        if execution.sliced_attention {
            per_token += flops.attention_core;
        }
        let pass_rows = execution.pass_rows(batch_rows);
        let passes = (batch_rows as f64 / pass_rows as f64).ceil();
        let pieces = |chunk: i64| (seq_len as f64 / chunk as f64).ceil();
        let slices: f64 = (0..cfg.n_layers)
            .map(|i| match cfg.attention_of_layer(i) {
                AttentionKind::Lsh if execution.sliced_attention => (cfg.n_heads * cfg.lsh.n_hashes) as f64,
                AttentionKind::Local if execution.sliced_attention => cfg.n_heads as f64,
                _ => 0.0,
            })
            .sum();
        let layers = cfg.n_layers as f64;
        let calls_per_pass = CALLS_PER_PASS
            + layers * CALLS_PER_LAYER
            + slices * CALLS_PER_SLICE
            + layers * pieces(execution.ff_chunk(seq_len)) * CALLS_PER_FF_CHUNK
            + pieces(execution.loss_chunk(seq_len)) * CALLS_PER_LOSS_CHUNK;
        Self { flops: tokens * per_token, calls: passes * calls_per_pass }
    }
}

/// Float32 training arithmetic per CPU thread, FLOP/s, and seconds per libtorch call:
/// least squares (of relative errors) over 120 measured training steps of every
/// execution plan of `duplication-4k` and `enwik8-cpu` on 2 threads
/// (`docs/memory-plan-cpu.md`; median error −8%, −26% and +15% per preset: the rate of
/// a model depends on its widths, the ranking of one model's plans is what counts).
const CPU_FLOPS_PER_THREAD: f64 = 54e9;
const CPU_SECS_PER_CALL: f64 = 72e-6;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ExecutionConfig;

    fn model() -> ModelConfig {
        ModelConfig { n_layers: 2, max_seq_len: 1024, attention: vec![AttentionKind::Lsh], ..Default::default() }
    }

    fn secs(execution: ExecutionConfig) -> f64 {
        let cfg = ModelConfig { execution, ..model() };
        StepTimeModel::for_device(Device::Cpu).step_secs(&cfg, 4, 1024)
    }

    #[test]
    fn every_memory_saving_costs_time() {
        let plain = ExecutionConfig { reversible: false, ..Default::default() };
        let base = secs(plain.clone());
        for cheaper_in_memory in [
            ExecutionConfig { reversible: true, ..plain.clone() },
            ExecutionConfig { sliced_attention: true, ..plain.clone() },
            ExecutionConfig { ff_chunk_len: Some(128), ..plain.clone() },
            ExecutionConfig { loss_chunk_len: Some(128), ..plain.clone() },
            ExecutionConfig { micro_batch_rows: Some(1), ..plain.clone() },
        ] {
            assert!(secs(cheaper_in_memory.clone()) > base, "{cheaper_in_memory:?}");
        }
        // A reversible backward recomputes the blocks' forward: about a third more.
        let ratio = secs(ExecutionConfig { reversible: true, ..plain }) / base;
        assert!((1.15..1.4).contains(&ratio), "{ratio}");
    }
}
