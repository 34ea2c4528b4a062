//! The settings of one LSH attention call (`LshParams`), and the rules that depend only
//! on them: how a sequence is padded, when it attends densely, and the released models'
//! float32 forms of the window softmax and of the rounds' weights (`lsh.wrap_around`).

use tch::{Kind, Tensor};

use super::chunking::padding_to_chunks;
use super::hashing::HashSpec;
use super::lsh::combine_rounds;
use super::softmax::WindowSoftmax;
use crate::model::config::ModelConfig;

/// The default of `LshParams::max_logits_at_once`. (Under autograd, slices cost a
/// recomputation: that is `sliced_attention`'s choice, not this limit's.)
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
    pub strict_causal: bool,
    /// Logits divided by √Dh (`lsh.scale_logits`).
    pub scale_logits: bool,
    /// The released checkpoints' windows and padding (`lsh.wrap_around`).
    pub wrap_around: bool,
    /// Under `wrap_around`: a length above `pad_above` is padded to a multiple of
    /// `pad_multiple` (the model's chunk lengths' lcm and shortest, see
    /// `ModelConfig::chunk_lengths`).
    pub pad_multiple: i64,
    pub pad_above: i64,
    pub dropout: f64,
    /// One slice (a head and round, or a head) at a time under activation checkpointing
    /// (see `lsh_attend`).
    pub sliced: bool,
    /// Without autograd, batched-path attention with more logits than this runs a slice at a time
    /// (the same numbers, nothing recomputed), so that evaluation and generation at long
    /// context hold one slice's logits at once: default 2^26 float32 logits, 256 MiB,
    /// each with its mask and probability alongside.
    pub max_logits_at_once: i64,
    /// Through the fused kernel where it applies (`lsh.fused`).
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
            strict_causal: cfg.lsh.strict_causal,
            scale_logits: cfg.lsh.scale_logits,
            wrap_around: cfg.lsh.wrap_around,
            pad_multiple,
            pad_above,
            dropout: cfg.dropout_attention,
            sliced: cfg.sliced_attention,
            max_logits_at_once: MOST_LOGITS_AT_ONCE,
            fused: cfg.lsh.fused,
        }
    }

    /// Keys a query's window holds: (before + 1 + after)·C.
    pub(super) fn window_len(&self) -> i64 {
        (self.n_chunks_before + 1 + self.n_chunks_after) * self.chunk_len
    }

    /// The length a `t`-token sequence is padded to.
    pub(super) fn padded_len(&self, t: i64) -> i64 {
        if !self.wrap_around {
            t + padding_to_chunks(t, self.chunk_len)
        } else if t > self.pad_above {
            t + padding_to_chunks(t, self.pad_multiple)
        } else {
            t
        }
    }

    /// The softmax over a window and its log-sum-exp, and under `wrap_around` the factor
    /// per row that turns the softmax into what the released models compute,
    /// exp(logits − logsumexp(logits)) with the log-sum-exp rounded to float32: near
    /// SELF_LOGIT (a row that sees only the query itself) float32 numbers are 2^-7
    /// apart, and such a row then sums to 1 only within ±0.4%, and so does its output.
    /// The factor, exp(max logit − lse) / max probability, is 1 within float32 rounding
    /// elsewhere; applied to the row's output it spares a pass over the probabilities.
    ///
    /// # Shapes
    /// `logits`: (..., W); returns (..., W), (..., 1) and (..., 1) or None.
    pub(super) fn window_softmax(&self, logits: &Tensor) -> (Tensor, Tensor, Option<Tensor>) {
        let softmax = WindowSoftmax::new(logits);
        let lse = softmax.logsumexp(); // (..., 1)
        let released_scale = self.wrap_around.then(|| (&softmax.max_logit - &lse).exp() / &softmax.max_prob); // (..., 1)
        (softmax.probs, lse, released_scale)
    }

    /// `combine_rounds`; under `wrap_around` with the round weights
    /// exp(lse − logsumexp(lse)), as the released models compute them (see
    /// `window_softmax`).
    ///
    /// # Shapes
    /// `out`: (B, H, R, N, Dh); `lse`: (B, H, R, N, 1); returns (B, H, N, Dh).
    pub(super) fn weigh_rounds(&self, out: &Tensor, lse: &Tensor) -> Tensor {
        if !self.wrap_around || out.size()[2] == 1 {
            return combine_rounds(out, lse);
        }
        let weights = (lse - lse.logsumexp([2], true)).exp(); // (B, H, R, N, 1)
        (out * weights).sum_dim_intlist(2, false, None::<Kind>)
    }

    /// The settings for a sequence padded to `t_pad` tokens: under `wrap_around`, one
    /// that fits in a chunk attends densely (one round, one chunk, nothing before).
    pub(super) fn for_padded_len(&self, t_pad: i64) -> Self {
        if !self.wrap_around || t_pad > self.chunk_len {
            return self.clone();
        }
        Self {
            n_hashes: 1,
            chunk_len: t_pad,
            n_chunks_before: 0,
            n_chunks_after: 0,
            wrap_around: false,
            ..self.clone()
        }
    }
}
