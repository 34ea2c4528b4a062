//! Which keys an LSH query's window offers: the chunk rule (paper §2.3, "attend within a
//! chunk and one chunk back"), the strictly causal rule, and the released checkpoints'
//! rule, as one type. The rules differ in how a sequence is padded, how a chunk finds its
//! neighbours, where the self-mask applies, and in the float32 forms of the window
//! softmax and of the rounds' weights; every branch on the rule lives in this file.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::chunking::{look_around, look_around_ring, padding_to_chunks};
use super::lsh_params::LshParams;
use super::softmax::WindowSoftmax;

/// Logit of a query's own key (paper §2, "Shared-QK Transformer": a query attends to
/// itself only when it has no other target). The value is the Trax reference's
/// `self_mask_value`: far below any real logit, far above `MASKED_LOGIT`.
pub const SELF_LOGIT: f64 = -1e5;
/// Logit of a key a query may not see (the future, padding, outside the window). Finite
/// so that a row with nothing to see stays finite.
pub const MASKED_LOGIT: f64 = -1e9;

/// The chunk rule of the LSH layers (`lsh.window`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowRule {
    /// The paper's: the chunks of each round's sorted sequence attend to themselves and
    /// to `n_chunks_before` / `n_chunks_after` neighbours within that round; a round's
    /// first chunk has nothing before it. Causal masking compares positions, so a query
    /// may see an earlier key that was sorted into a later slot of its window.
    #[default]
    Paper,
    /// Strictly causal: a query sees only keys of its own bucket among the `chunk_len`
    /// slots just before it in sorted order, so no output depends on a later token (what
    /// cached decoding computes exactly). Needs a causal model and a chunk before.
    Strict,
    /// The released checkpoints' (Trax, as transformers reproduces them): the sorted
    /// rounds form one ring, so the first chunk of a round looks back at the previous
    /// round's last chunk (the first round's at the last round's); a key at the query's
    /// own position from another round is self-masked too; a sequence no longer than a
    /// chunk attends densely; lengths longer than the shortest chunk length are padded to
    /// the least common multiple of the model's chunk lengths; the window softmax and the
    /// rounds' weights take their float32 forms (`released_row_scale`).
    Released,
}

impl WindowRule {
    /// Whether the rule fits a model that is `causal` with `n_chunks_before` chunks
    /// before each: the strict rule needs a causal model and a chunk before.
    pub fn check(self, causal: bool, n_chunks_before: i64) -> Result<()> {
        if self == Self::Strict && !causal {
            bail!("lsh.window = \"strict\" needs causal = true");
        }
        if self == Self::Strict && n_chunks_before < 1 {
            bail!("lsh.window = \"strict\" needs lsh.n_chunks_before >= 1 (a query's window reaches one chunk back)");
        }
        Ok(())
    }

    /// The length a `t`-token sequence is padded to: a multiple of the chunk length, or
    /// under the released rule of `p.pad_multiple` once longer than `p.pad_above`.
    pub fn padded_len(self, p: &LshParams, t: i64) -> i64 {
        match self {
            Self::Paper | Self::Strict => t + padding_to_chunks(t, p.chunk_len),
            Self::Released if t > p.pad_above => t + padding_to_chunks(t, p.pad_multiple),
            Self::Released => t,
        }
    }

    /// The settings for a sequence padded to `t_pad` tokens: under the released rule, one
    /// that fits in a chunk attends densely (one round, one chunk, nothing before).
    pub fn for_padded_len(self, p: &LshParams, t_pad: i64) -> LshParams {
        if self != Self::Released || t_pad > p.chunk_len {
            return p.clone();
        }
        p.dense(t_pad)
    }

    /// Rounds that one slice of sliced attention must hold: the released ring joins all
    /// rounds of a head.
    pub fn rounds_per_slice(self, n_rounds: i64) -> i64 {
        match self {
            Self::Released => n_rounds,
            Self::Paper | Self::Strict => 1,
        }
    }

    /// Whether the fused CPU kernel computes this rule (the ring does not exist there).
    pub fn fused_kernel_covers(self) -> bool {
        self != Self::Released
    }

    /// Whether attention reads each key's bucket (the strict rule compares buckets).
    pub fn reads_buckets(self) -> bool {
        self == Self::Strict
    }

    /// Each chunk followed by its window of neighbours: within its round, or under the
    /// released rule along the ring of all rounds' chunks (`fill` is then never needed).
    ///
    /// # Shapes
    /// `x`: (B, h, r, NC, C, E); returns (B, h, r, NC, W, E), W = (before + 1 + after)·C.
    pub fn windows(self, x: &Tensor, before: i64, after: i64, fill: f64) -> Tensor {
        if self != Self::Released {
            return look_around(x, 3, before, after, fill);
        }
        let [b, h, r, n_chunks, c, e] = <[i64; 6]>::try_from(x.size()).expect("a 6-D chunked tensor");
        let ring = look_around_ring(&x.view([b, h, r * n_chunks, c, e]), 2, before, after); // (B, h, r*NC, W, E)
        ring.view([b, h, r, n_chunks, -1, e]) // (B, h, r, NC, W, E)
    }

    /// Keys the rule hides beyond the causal and padding masks: under the strict rule,
    /// a key is visible only in the query's own bucket and among the `chunk_len` slots
    /// just before it in sorted order. Sorted order within a bucket is position order, so
    /// the visible set depends only on tokens up to the query.
    ///
    /// # Shapes
    /// `buckets`: (B, H, R, Tp); `sticker`: (B, H, R*Tp); `shape`: [B, H, R, NC, C];
    /// returns (B, H, R, NC, C, W) bool, or None.
    pub fn hidden_by_rule(self, buckets: &Tensor, sticker: &Tensor, p: &LshParams, shape: [i64; 5]) -> Option<Tensor> {
        if self != Self::Strict {
            return None;
        }
        let [b, h, r, n_chunks, c] = shape;
        let t_pad = n_chunks * c;
        let (before, after) = (p.n_chunks_before, p.n_chunks_after);
        let s_bucket = buckets.view([b, h, r * t_pad]).gather(2, sticker, false).view(shape); // (B, H, R, NC, C)
        let k_bucket = look_around(&s_bucket, 3, before, after, -1.0).unsqueeze(-2); // (B, H, R, NC, 1, W)
        let slot = Tensor::arange(t_pad, (Kind::Int64, buckets.device())).view([n_chunks, c]); // (NC, C) slot within round
        let k_slot = look_around(&slot, 0, before, after, -1.0).unsqueeze(-2); // (NC, 1, W)
        let distance = slot.unsqueeze(-1) - k_slot; // (NC, C, W)
        let out_of_reach = distance.lt(0).logical_or(&distance.gt(c));
        Some(k_bucket.ne_tensor(&s_bucket.unsqueeze(-1)).logical_or(&out_of_reach))
    }

    /// The logits with the self-mask and the hidden keys set, in the rule's order: the
    /// query's own slot (the diagonal at `before·C`: its own chunk follows the `before`
    /// ones) before the other masks; under the released rule, every key at the query's
    /// position (its own slot and the same position from the previous round) after them,
    /// as the released models apply it.
    ///
    /// # Shapes
    /// `logits`: (B, h, r, NC, C, W); `hidden`: broadcastable to it; `k_pos`:
    /// (B, h, r, NC, 1, W); `q_pos`: (B, h, r, NC, C, 1).
    pub fn mask_logits(self, logits: &mut Tensor, hidden: &Tensor, k_pos: &Tensor, q_pos: &Tensor, own_slot: i64) {
        if self != Self::Released {
            let _ = logits.diagonal(own_slot, -2, -1).fill_(SELF_LOGIT); // (B, h, r, NC, C)
        }
        let _ = logits.masked_fill_(hidden, MASKED_LOGIT);
        if self == Self::Released {
            let _ = logits.masked_fill_(&k_pos.eq_tensor(q_pos), SELF_LOGIT); // (B, h, r, NC, C, W)
        }
    }

    /// The softmax over a window and its log-sum-exp, and under the released rule the
    /// factor per row that turns the softmax into what the released models compute,
    /// exp(logits − logsumexp(logits)) with the log-sum-exp rounded to float32: near
    /// SELF_LOGIT (a row that sees only the query itself) float32 numbers are 2^-7
    /// apart, and such a row then sums to 1 only within ±0.4%, and so does its output.
    /// The factor, exp(max logit − lse) / max probability, is 1 within float32 rounding
    /// elsewhere; applied to the row's output it spares a pass over the probabilities.
    ///
    /// # Shapes
    /// `logits`: (..., W); returns (..., W), (..., 1) and (..., 1) or None.
    pub fn window_softmax(self, logits: &Tensor) -> (Tensor, Tensor, Option<Tensor>) {
        let softmax = WindowSoftmax::new(logits);
        let lse = softmax.logsumexp(); // (..., 1)
        let released_row_scale =
            (self == Self::Released).then(|| (&softmax.max_logit - &lse).exp() / &softmax.max_prob); // (..., 1)
        (softmax.probs, lse, released_row_scale)
    }

    /// The rounds' outputs, each weighed by its share of the total probability mass: a
    /// softmax over the rounds' log-sum-exps, or under the released rule
    /// exp(lse − logsumexp(lse)), as the released models compute them (see
    /// `window_softmax`).
    ///
    /// # Shapes
    /// `out`: (B, H, R, N, Dh); `lse`: (B, H, R, N, 1); returns (B, H, N, Dh).
    pub fn weigh_rounds(self, out: &Tensor, lse: &Tensor) -> Tensor {
        if out.size()[2] == 1 {
            return out.squeeze_dim(2);
        }
        let weights = match self {
            Self::Released => (lse - lse.logsumexp([2], true)).exp(), // (B, H, R, N, 1)
            Self::Paper | Self::Strict => lse.softmax(2, lse.kind()), // (B, H, R, N, 1)
        };
        (out * weights).sum_dim_intlist(2, false, None::<Kind>)
    }
}
