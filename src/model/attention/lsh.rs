//! LSH self-attention (paper §2-3): shared query/key, angular LSH by random rotations,
//! several hash rounds, sort by bucket, attend within a chunk and its neighbours, mask
//! (causal, padding, self), undo the sort and combine the rounds by their log-sum-exps.

use tch::{nn, Kind, Tensor};

pub use super::bucket_sort::sort_slots;
use super::bucket_tape::recorded_or_hash;
use super::chunking::{look_around, look_around_ring};
use super::hashing::{hash_buckets, random_rotations, seeded_rotations};
use super::lsh_fused::{self, WindowRules};
pub use super::lsh_params::LshParams;
use super::qkv::output_projection;
use crate::model::activation_checkpoint::checkpoint;
use crate::model::config::ModelConfig;
use crate::model::dense::linear;
use crate::model::parameters::linear_parameters;
use crate::model::seeded_random::{self, ForwardMode};
use crate::precision::at_least_float32;

/// Logit of a query's own key (paper §2, "Shared-QK Transformer": a query attends to
/// itself only when it has no other target). The value is the Trax reference's
/// `self_mask_value`: far below any real logit, far above `MASKED_LOGIT`.
pub const SELF_LOGIT: f64 = -1e5;
/// Logit of a key a query may not see (the future, padding, outside the window). Finite
/// so that a row with nothing to see stays finite.
pub const MASKED_LOGIT: f64 = -1e9;

const ROTATIONS_TAG: u64 = 1;
const DROPOUT_TAG: u64 = 2;

/// LSH attention over all rounds, chunks, heads and the batch: at once, or with
/// `p.sliced` one (head, round) at a time under activation checkpointing, so that the
/// (heads × rounds × positions × window) tensors of one slice exist at a time in the
/// forward and in the backward. Both give the same result (the slices' dropout masks
/// are their share of the whole's). Under `wrap_around` the rounds form one ring, so a
/// slice holds all rounds of its head. Without autograd, attention on the batched path
/// with more than `p.max_logits_at_once` logits runs slice by slice as well (the fused
/// kernel holds no logits).
///
/// # Shapes
/// `qk`, `v`: (B, H, T, Dh); `rotations`: (1 or H, Dh, R, S); returns (B, H, T, Dh).
pub fn lsh_attend(qk: &Tensor, v: &Tensor, rotations: &Tensor, p: &LshParams, mode: ForwardMode) -> Tensor {
    let (_, h, t, _) = qk.size4().unwrap();
    let Padded { qk, v, buckets, p } = Padded::new(qk, v, rotations, p, mode);
    let (p, r, t_pad) = (&p, p.n_hashes, qk.size()[2]);
    let n_logits = qk.size()[0] * h * r * t_pad * p.window_len();
    // The fused kernel holds no logits: nothing to slice for.
    let holds_logits = lsh_fused::unavailable(p, qk.kind(), qk.device(), mode).is_some();
    if !p.sliced && (crate::autograd::grad_enabled() || !holds_logits || n_logits <= p.max_logits_at_once) {
        let (out, lse) = attend_rounds(&qk, &v, &buckets, p, t, mode, Slice::whole(h, r));
        return p.weigh_rounds(&out, &lse).narrow(2, 0, t);
    }
    let rounds_per_slice = if p.wrap_around { r } else { 1 };
    let heads: Vec<Tensor> = (0..h)
        .map(|head| {
            let inputs = [qk.narrow(1, head, 1), v.narrow(1, head, 1)]; // 2 × (B, 1, Tp, Dh)
            let (outs, lses): (Vec<Tensor>, Vec<Tensor>) = (0..r)
                .step_by(rounds_per_slice as usize)
                .map(|round| {
                    let buckets = buckets.narrow(1, head, 1).narrow(2, round, rounds_per_slice); // (B, 1, r, Tp)
                    let (p, slice) = (p.clone(), Slice { head, round, n_heads: h, n_rounds: r });
                    let attend = move |x: &[Tensor]| {
                        let (out, lse) = attend_rounds(&x[0], &x[1], &buckets, &p, t, mode, slice);
                        vec![out, lse] // (B, 1, r, Tp, Dh), (B, 1, r, Tp, 1)
                    };
                    let mut outputs = checkpoint(&inputs, 2, attend).unwrap_or_else(|e| panic!("{e}")).into_iter();
                    (outputs.next().unwrap(), outputs.next().unwrap())
                })
                .unzip();
            p.weigh_rounds(&Tensor::cat(&outs, 2), &Tensor::cat(&lses, 2)) // (B, 1, Tp, Dh)
        })
        .collect();
    Tensor::cat(&heads, 1).narrow(2, 0, t) // (B, H, T, Dh)
}

/// Each round's outputs and log-sum-exps before the rounds are combined, through the
/// fused kernel or the batched path as `p.fused` says: for comparing the two.
///
/// # Shapes
/// `qk`, `v`: (B, H, T, Dh); `rotations`: (1 or H, Dh, R, S); returns (B, H, R, Tp, Dh)
/// and (B, H, R, Tp, 1), padding positions included.
pub fn attend_each_round(
    qk: &Tensor,
    v: &Tensor,
    rotations: &Tensor,
    p: &LshParams,
    mode: ForwardMode,
) -> (Tensor, Tensor) {
    let (_, h, t, _) = qk.size4().unwrap();
    let Padded { qk, v, buckets, p } = Padded::new(qk, v, rotations, p, mode);
    attend_rounds(&qk, &v, &buckets, &p, t, mode, Slice::whole(h, p.n_hashes))
}

/// A sequence padded as `p` asks, its buckets, and the settings for its padded length.
pub(super) struct Padded {
    /// (B, H, Tp, Dh)
    pub qk: Tensor,
    /// (B, H, Tp, Dh)
    pub v: Tensor,
    /// (B, H, R, Tp)
    pub buckets: Tensor,
    pub p: LshParams,
}

impl Padded {
    /// # Shapes
    /// `qk`, `v`: (B, H, T, Dh); `rotations`: (1 or H, Dh, R, S).
    pub(super) fn new(qk: &Tensor, v: &Tensor, rotations: &Tensor, p: &LshParams, mode: ForwardMode) -> Self {
        let t = qk.size()[2];
        let t_pad = p.padded_len(t);
        let p = p.for_padded_len(t_pad);
        let rotations = rotations.narrow(2, 0, p.n_hashes); // (1 or H, Dh, R, S)
        let pad = [0, 0, 0, t_pad - t];
        let qk = qk.constant_pad_nd(pad); // (B, H, Tp, Dh)
        let v = v.constant_pad_nd(pad); // (B, H, Tp, Dh)
        let buckets = padded_buckets(&qk, &rotations, &p, t, mode); // (B, H, R, Tp)
        Self { qk, v, buckets, p }
    }
}

/// The buckets of every head and round of a sequence padded to Tp tokens, of which the
/// first `t` are real: hashed in one call however the attention is then sliced (a replay,
/// the reversible backward, reads them back from the tape; slices share them), padding
/// in an extra last bucket so that real tokens' chunks do not depend on it.
///
/// # Shapes
/// `qk`: (B, H, Tp, Dh); `rotations`: (1 or H, Dh, R, S); returns (B, H, R, Tp).
fn padded_buckets(qk: &Tensor, rotations: &Tensor, p: &LshParams, t: i64, mode: ForwardMode) -> Tensor {
    let positions = Tensor::arange(qk.size()[2], (Kind::Int64, qk.device())); // (Tp)
    let buckets = recorded_or_hash(mode.seed, || hash_buckets(qk, rotations, &p.hash)); // (B, H, R, Tp)
    buckets.masked_fill(&positions.ge(t), p.hash.n_buckets)
}

/// Where the heads and rounds given to `attend_rounds` start among all of them (for the
/// slice's share of the dropout mask).
#[derive(Clone, Copy, Debug)]
struct Slice {
    head: i64,
    round: i64,
    n_heads: i64,
    n_rounds: i64,
}

impl Slice {
    fn whole(n_heads: i64, n_rounds: i64) -> Self {
        Self { head: 0, round: 0, n_heads, n_rounds }
    }
}

/// LSH attention of each given head in each given round, before the rounds are
/// combined: sort by bucket, attend within chunks, undo the sort. Positions from `t` on
/// are padding. Through the fused kernel where it applies (`lsh_fused`), else batched:
/// all chunks' windows, masks and probabilities materialised at once.
///
/// # Shapes
/// `qk`, `v`: (B, h, Tp, Dh); `buckets`: (B, h, r, Tp); returns the outputs
/// (B, h, r, Tp, Dh) and their log-sum-exps (B, h, r, Tp, 1).
fn attend_rounds(
    qk: &Tensor,
    v: &Tensor,
    buckets: &Tensor,
    p: &LshParams,
    t: i64,
    mode: ForwardMode,
    slice: Slice,
) -> (Tensor, Tensor) {
    let (b, h, t_pad, dh) = qk.size4().unwrap();
    let device = qk.device();
    let (r, c) = (buckets.size()[2], p.chunk_len);
    let n_buckets = p.hash.n_buckets;
    let n_chunks = t_pad / c; // chunks per round

    let sticker = sort_slots(buckets, n_buckets); // (B, h, r*Tp): slot -> round*Tp + position

    if lsh_fused::unavailable(p, qk.kind(), device, mode).is_none() {
        let q = if p.scale_logits { qk * (dh as f64).powf(-0.5) } else { qk.shallow_clone() };
        return lsh_fused::attend_rounds(&q, &normalize(qk), v, &sticker, buckets, WindowRules::new(p, t));
    }

    let undo_sort = sticker.argsort_stable(true, -1, false); // (B, h, r*Tp): round*Tp + position -> slot
    let s_pos = sticker.remainder(t_pad); // (B, h, r*Tp) original position of each slot
    let sqk = gather_rows(qk, &s_pos); // (B, h, r*Tp, Dh)
    let sv = gather_rows(v, &s_pos); // (B, h, r*Tp, Dh)

    // Chunks of the sorted sequence, each with its window of neighbours: within its round,
    // or under `wrap_around` along the ring of all rounds' chunks.
    let (before, after) = (p.n_chunks_before, p.n_chunks_after);
    let window = |x: &Tensor, fill: f64| {
        let x = x.view([b, h, r, n_chunks, c, -1]); // (B, h, r, NC, C, E)
        if !p.wrap_around {
            return look_around(&x, 3, before, after, fill); // (B, h, r, NC, W, E)
        }
        let ring = look_around_ring(&x.view([b, h, r * n_chunks, c, -1]), 2, before, after); // (B, h, r*NC, W, E)
        ring.view([b, h, r, n_chunks, -1, x.size()[5]]) // (B, h, r, NC, W, E)
    };
    let sq = sqk.view([b, h, r, n_chunks, c, dh]); // (B, h, r, NC, C, Dh)
    let sq = if p.scale_logits { sq * (dh as f64).powf(-0.5) } else { sq };
    let sk = window(&normalize(&sqk), 0.0); // (B, h, r, NC, W, Dh) unit-length keys, W = (before+1+after)·C
    let sv = window(&sv, 0.0); // (B, h, r, NC, W, Dh)

    // Masked and normalised in float32 under autocast: the mask constants are finite
    // there, and the log-sum-exps that weigh the rounds keep their precision.
    let mut logits = at_least_float32(&sq.matmul(&sk.transpose(-1, -2))); // (B, h, r, NC, C, W)

    // A query's own key: query c of a chunk sits at slot before·C + c of its window (its
    // own chunk follows the `before` ones), so the self mask is that diagonal. (Under
    // `wrap_around` the window may hold the query's position twice: see below.)
    if !p.wrap_around {
        let _ = logits.diagonal(before * c, -2, -1).fill_(SELF_LOGIT); // (B, h, r, NC, C)
    }

    // Masks on original positions; -1 marks a neighbour chunk outside the round.
    let q_pos = s_pos.view([b, h, r, n_chunks, c]);
    let k_pos = window(&q_pos.unsqueeze(-1), -1.0).squeeze_dim(-1).unsqueeze(-2); // (B, h, r, NC, 1, W)
    let q_pos = q_pos.unsqueeze(-1); // (B, h, r, NC, C, 1)
    let invalid = k_pos.lt(0).logical_or(&k_pos.ge(t)); // (B, h, r, NC, 1, W) outside the round, padding
    let mut hidden = if p.causal {
        // Invalid keys compare as later than every query: one full-size comparison.
        k_pos.masked_fill(&invalid, i64::MAX).gt_tensor(&q_pos) // (B, h, r, NC, C, W)
    } else {
        invalid
    };
    if p.strict_causal {
        hidden = hidden.logical_or(&strict_causal_hidden(buckets, &sticker, p, [b, h, r, n_chunks, c]));
    }
    let _ = logits.masked_fill_(&hidden, MASKED_LOGIT);
    if p.wrap_around {
        // Every key at the query's position, its own slot and the same position from the
        // previous round (after the other masks, as the released models apply it).
        let _ = logits.masked_fill_(&k_pos.eq_tensor(&q_pos), SELF_LOGIT); // (B, h, r, NC, C, W)
    }

    let (probs, lse, row_scale) = p.window_softmax(&logits); // (B, h, r, NC, C, W), 2 × (B, h, r, NC, C, 1)
    let whole = [b, slice.n_heads, slice.n_rounds, n_chunks, c, logits.size()[5]];
    let offset = [0, slice.head, slice.round, 0, 0, 0];
    let seed = mode.child(DROPOUT_TAG).seed;
    let probs = seeded_random::dropout_block(&probs, p.dropout, seed, mode.train, &whole, &offset);
    let s_out = probs.to_kind(sv.kind()).matmul(&sv); // (B, h, r, NC, C, Dh)
    let s_out = match row_scale {
        Some(scale) => s_out * scale,
        None => s_out,
    };

    // Undo the sort.
    let out = gather_rows(&s_out.view([b, h, r * t_pad, dh]), &undo_sort).view([b, h, r, t_pad, dh]); // (B, h, r, Tp, Dh)
    let lse = lse.view([b, h, r * t_pad]).gather(2, &undo_sort, false).view([b, h, r, t_pad, 1]); // (B, h, r, Tp, 1)
    (out, lse)
}

/// The rounds' outputs, each weighed by its share of the total probability mass
/// (softmax over the rounds' log-sum-exps).
///
/// # Shapes
/// `out`: (B, H, R, N, Dh); `lse`: (B, H, R, N, 1); returns (B, H, N, Dh).
pub fn combine_rounds(out: &Tensor, lse: &Tensor) -> Tensor {
    if out.size()[2] == 1 {
        return out.squeeze_dim(2);
    }
    (out * lse.softmax(2, lse.kind())).sum_dim_intlist(2, false, None::<Kind>)
}

/// Strict causality: a key is visible only in the query's own bucket and among the
/// `chunk_len` slots just before it in sorted order. Sorted order within a bucket is
/// position order, so the visible set depends only on tokens up to the query.
///
/// # Shapes
/// `buckets`: (B, H, R, Tp); `sticker`: (B, H, R*Tp); returns (B, H, R, NC, C, W) bool.
fn strict_causal_hidden(buckets: &Tensor, sticker: &Tensor, p: &LshParams, shape: [i64; 5]) -> Tensor {
    let [b, h, r, n_chunks, c] = shape;
    let t_pad = n_chunks * c;
    let s_bucket = buckets.view([b, h, r * t_pad]).gather(2, sticker, false).view(shape); // (B, H, R, NC, C)
    let k_bucket = look_around(&s_bucket, 3, p.n_chunks_before, p.n_chunks_after, -1.0).unsqueeze(-2); // (B, H, R, NC, 1, W)
    let slot = Tensor::arange(t_pad, (Kind::Int64, buckets.device())).view([n_chunks, c]); // (NC, C) slot within round
    let k_slot = look_around(&slot, 0, p.n_chunks_before, p.n_chunks_after, -1.0).unsqueeze(-2); // (NC, 1, W)
    let q_slot = slot.unsqueeze(-1); // (NC, C, 1)
    let distance = q_slot - k_slot; // (NC, C, W)
    let out_of_reach = distance.lt(0).logical_or(&distance.gt(c));
    k_bucket.ne_tensor(&s_bucket.unsqueeze(-1)).logical_or(&out_of_reach)
}

/// Rows of `x` picked per (batch, head): out[b, h, m] = x[b, h, index[b, h, m]]. One
/// `index_select` of whole rows, several times faster on CPU than an element-wise
/// `gather` with an expanded index.
///
/// # Shapes
/// `x`: (B, H, N, Dh); `index`: (B, H, M) int64; returns (B, H, M, Dh).
pub fn gather_rows(x: &Tensor, index: &Tensor) -> Tensor {
    let (b, h, n, dh) = x.size4().unwrap();
    let m = index.size()[2];
    let row_offset = Tensor::arange(b * h, (Kind::Int64, x.device())).view([b, h, 1]) * n; // (B, H, 1)
    let flat_index = (index + row_offset).view([-1]); // (B*H*M)
    x.reshape([b * h * n, dh]).index_select(0, &flat_index).view([b, h, m, dh])
}

/// Vectors scaled to unit length (the shared keys of paper §2). The released models
/// divide by √(|x|² + Dh·1e-6) instead of max(|x|, 1e-6): the two differ by less than
/// Dh·1e-6 / (2|x|²) relatively, nothing at the lengths trained keys have.
pub fn normalize(x: &Tensor) -> Tensor {
    const NORM_FLOOR: f64 = 1e-6;
    x / x.norm_scalaropt_dim(2, [-1], true).clamp_min(NORM_FLOOR)
}

/// The LSH attention layer: shared query/key and value projections, LSH attention,
/// output projection.
#[derive(Debug)]
pub struct LshAttention {
    qk: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    n_heads: i64,
    d_head: i64,
    hash_seed: Option<u64>,
    pub params: LshParams,
}

impl LshAttention {
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        let inner = cfg.n_heads * cfg.d_head();
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Self {
            qk: nn::linear(&vs / "qk", cfg.d_model, inner, no_bias),
            v: nn::linear(&vs / "v", cfg.d_model, inner, no_bias),
            out: nn::linear(&vs / "out", inner, cfg.d_model, output_projection(cfg)),
            n_heads: cfg.n_heads,
            d_head: cfg.d_head(),
            hash_seed: cfg.lsh.hash_seed,
            params: LshParams::new(cfg),
        }
    }

    /// The trainable tensors.
    pub fn parameters(&self) -> Vec<Tensor> {
        [&self.qk, &self.v, &self.out].into_iter().flat_map(linear_parameters).collect()
    }

    /// # Shapes
    /// `x`: (B, T, D); returns (B, T, D).
    pub fn forward(&self, x: &Tensor, mode: ForwardMode) -> Tensor {
        let (qk, v) = self.project(x); // (B, H, T, Dh) each
        let out = lsh_attend(&qk, &v, &self.rotations(mode, x.device()), &self.params, mode); // (B, H, T, Dh)
        self.output(&out)
    }

    /// The buckets this layer's forward sorts by, padding positions included (in the
    /// extra last bucket, n_buckets): for comparing the hashing with another
    /// implementation's.
    ///
    /// # Shapes
    /// `x`: (B, T, D); returns (B, H, R, Tp) int64.
    pub fn buckets(&self, x: &Tensor, mode: ForwardMode) -> Tensor {
        let (qk, _) = self.project(x); // (B, H, T, Dh)
        let t = qk.size()[2];
        let t_pad = self.params.padded_len(t);
        let p = self.params.for_padded_len(t_pad);
        let rotations = self.rotations(mode, x.device()).narrow(2, 0, p.n_hashes);
        let qk = qk.constant_pad_nd([0, 0, 0, t_pad - t]); // (B, H, Tp, Dh)
        padded_buckets(&qk, &rotations, &p, t, mode)
    }

    /// The shared query/key and the values, split into heads.
    ///
    /// # Shapes
    /// `x`: (B, T, D); returns two (B, H, T, Dh).
    pub fn project(&self, x: &Tensor) -> (Tensor, Tensor) {
        let qk = split_heads(&linear(x, &self.qk), self.n_heads, self.d_head);
        let v = split_heads(&linear(x, &self.v), self.n_heads, self.d_head);
        (qk, v)
    }

    /// This layer's random rotations for a forward pass in `mode` (the layer's attention
    /// mode): the same for every call with the same mode, whatever the length; with
    /// `lsh.hash_seed`, the same for every call.
    ///
    /// # Shapes
    /// returns (1 or H, Dh, R, S)
    pub fn rotations(&self, mode: ForwardMode, device: tch::Device) -> Tensor {
        let p = &self.params;
        match self.hash_seed {
            Some(seed) => seeded_rotations(seed, self.n_heads, self.d_head, p.n_hashes, &p.hash, device),
            None => random_rotations(mode.child(ROTATIONS_TAG).seed, self.d_head, p.n_hashes, &p.hash, device),
        }
    }

    /// # Shapes
    /// `heads`: (B, H, T, Dh); returns (B, T, D).
    pub fn output(&self, heads: &Tensor) -> Tensor {
        // The rounds are combined in float32 (their log-sum-exps are): back to the
        // weights' dtype for a model held in bfloat16 (autocast casts either way).
        linear(&merge_heads(heads).to_kind(self.out.ws.kind()), &self.out)
    }
}

/// # Shapes
/// (B, T, H·Dh) -> (B, H, T, Dh)
pub fn split_heads(x: &Tensor, n_heads: i64, d_head: i64) -> Tensor {
    let (b, t, _) = x.size3().unwrap();
    x.view([b, t, n_heads, d_head]).transpose(1, 2)
}

/// # Shapes
/// (B, H, T, Dh) -> (B, T, H·Dh)
pub fn merge_heads(x: &Tensor) -> Tensor {
    let (b, h, t, dh) = x.size4().unwrap();
    x.transpose(1, 2).contiguous().view([b, t, h * dh])
}
