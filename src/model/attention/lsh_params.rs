//! The settings of one LSH attention call (`LshParams`), read from the model's config
//! once per layer; what they imply for a given length is the window rule's
//! (`window_rule`).

use super::hashing::HashSpec;
use super::window_rule::WindowRule;
use crate::model::config::ModelConfig;

/// The default of `LshParams::max_logits_at_once`. (Under autograd, slices cost a
/// recomputation: that is `execution.sliced_attention`'s choice, not this limit's.)
const MOST_LOGITS_AT_ONCE: i64 = 1 << 26;

/// The settings that shape one LSH attention call.
#[derive(Clone, Debug, PartialEq)]
pub struct LshParams {
    pub n_hashes: i64,
    pub hash: HashSpec,
    pub chunk_len: i64,
    pub n_chunks_before: i64,
    pub n_chunks_after: i64,
    pub causal: bool,
    /// Which keys a window offers (`lsh.window`).
    pub rule: WindowRule,
    /// Logits divided by √Dh (`compat.scale_lsh_logits`).
    pub scale_logits: bool,
    /// Under the released rule: a length above `pad_above` is padded to a multiple of
    /// `pad_multiple` (the model's chunk lengths' lcm and shortest, see
    /// `ModelConfig::chunk_lengths`).
    pub pad_multiple: i64,
    pub pad_above: i64,
    pub dropout: f64,
    /// One slice (a head and round, or a head) at a time under activation checkpointing
    /// (see `lsh_attend`).
    pub sliced: bool,
    /// Without autograd, batched-path attention with more logits than this runs a slice
    /// at a time (the same numbers, nothing recomputed), so that evaluation and
    /// generation at long context hold one slice's logits at once: default 2^26 float32
    /// logits, 256 MiB, each with its mask and probability alongside.
    pub max_logits_at_once: i64,
    /// Through the fused kernel where it applies (`execution.fused_lsh`).
    pub fused: bool,
}

impl Default for LshParams {
    /// The settings of the default model's LSH layers.
    fn default() -> Self {
        Self::new(&ModelConfig::default())
    }
}

impl LshParams {
    pub fn new(cfg: &ModelConfig) -> Self {
        let (pad_multiple, pad_above) = cfg.chunk_lengths().unwrap_or((cfg.lsh.chunk_len, cfg.lsh.chunk_len));
        Self {
            n_hashes: cfg.lsh.n_hashes,
            hash: HashSpec { n_buckets: cfg.n_buckets(), factors: cfg.bucket_factors() },
            chunk_len: cfg.lsh.chunk_len,
            n_chunks_before: cfg.lsh.n_chunks_before,
            n_chunks_after: cfg.lsh.n_chunks_after,
            causal: cfg.causal,
            rule: cfg.lsh.window,
            scale_logits: cfg.compat.scale_lsh_logits,
            pad_multiple,
            pad_above,
            dropout: cfg.dropout_attention,
            sliced: cfg.execution.sliced_attention,
            max_logits_at_once: MOST_LOGITS_AT_ONCE,
            fused: cfg.execution.fused_lsh,
        }
    }

    /// Keys a query's window holds: (before + 1 + after)·C.
    pub(super) fn window_len(&self) -> i64 {
        (self.n_chunks_before + 1 + self.n_chunks_after) * self.chunk_len
    }

    /// The length a `t`-token sequence is padded to (the rule's).
    pub(super) fn padded_len(&self, t: i64) -> i64 {
        self.rule.padded_len(self, t)
    }

    /// The settings for a sequence padded to `t_pad` tokens (the rule's).
    pub(super) fn for_padded_len(&self, t_pad: i64) -> Self {
        self.rule.for_padded_len(self, t_pad)
    }

    /// Dense attention with the shared query/key and self-mask over `len` tokens, LSH's
    /// exact special case: one round, one chunk of `len`, nothing before or after, the
    /// paper's rule.
    pub fn dense(&self, len: i64) -> Self {
        Self {
            n_hashes: 1,
            chunk_len: len,
            n_chunks_before: 0,
            n_chunks_after: 0,
            rule: WindowRule::Paper,
            ..self.clone()
        }
    }
}
