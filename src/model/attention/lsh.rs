//! LSH self-attention (paper §2-3): shared query/key, angular LSH by random rotations,
//! several hash rounds, sort by bucket, attend within a chunk and its neighbours, mask
//! (causal, padding, self), undo the sort and combine the rounds by their log-sum-exps.

use tch::{Kind, Tensor};

pub use super::bucket_sort::sort_slots;
use super::bucket_sort::undo_sort;
use super::bucket_tape::recorded_or_hash;
use super::hashing::hash_buckets;
use super::lsh_fused::{self, WindowRules};
pub use super::lsh_params::LshParams;
use super::lsh_path::{LshKernel, LshPath, Slicing};
pub use super::window_rule::{WindowRule, MASKED_LOGIT, SELF_LOGIT};
use crate::model::activation_checkpoint::checkpoint;
use crate::model::seeded_random::ForwardMode;
use crate::precision::at_least_float32;

/// Tag of the attention dropout's seed under the layer's mode (`lsh_layer` draws the
/// rotations under tag 1).
const DROPOUT_TAG: u64 = 2;

/// LSH attention over all rounds, chunks, heads and the batch, whole or one slice at a
/// time as `LshPath::choose` decides: with `p.sliced` one (head, round) at a time under
/// activation checkpointing, so that the (heads × rounds × positions × window) tensors
/// of one slice exist at a time in the forward and in the backward; without autograd,
/// batched attention over more than `p.max_logits_at_once` logits the same way, nothing
/// recomputed. All give the same result (the slices' dropout masks are their share of
/// the whole's). Under the released rule the rounds form one ring, so a slice holds all
/// rounds of its head.
///
/// # Shapes
/// `qk`, `v`: (B, H, T, Dh); `rotations`: (1 or H, Dh, R, S); returns (B, H, T, Dh).
pub fn lsh_attend(qk: &Tensor, v: &Tensor, rotations: &Tensor, p: &LshParams, mode: ForwardMode) -> Tensor {
    let (_, h, t, _) = qk.size4().unwrap();
    let Padded { qk, v, buckets, p } = Padded::new(qk, v, rotations, p, mode);
    let (p, r, t_pad) = (&p, p.n_hashes, qk.size()[2]);
    let n_logits = qk.size()[0] * h * r * t_pad * p.window_len();
    let path = LshPath::choose(p, qk.kind(), qk.device(), mode, n_logits);
    if path.slicing == Slicing::Whole {
        let (out, lse) = attend_rounds(&qk, &v, &buckets, p, t, mode, path.kernel, Slice::whole(h, r));
        return p.rule.weigh_rounds(&out, &lse).narrow(2, 0, t);
    }
    let rounds_per_slice = p.rule.rounds_per_slice(r);
    let heads: Vec<Tensor> = (0..h)
        .map(|head| {
            let inputs = [qk.narrow(1, head, 1), v.narrow(1, head, 1)]; // 2 × (B, 1, Tp, Dh)
            let (outs, lses): (Vec<Tensor>, Vec<Tensor>) = (0..r)
                .step_by(rounds_per_slice as usize)
                .map(|round| {
                    let buckets = buckets.narrow(1, head, 1).narrow(2, round, rounds_per_slice); // (B, 1, r, Tp)
                    let (p, slice) = (p.clone(), Slice { head, round, n_heads: h, n_rounds: r });
                    let attend = move |x: &[Tensor]| {
                        let (out, lse) = attend_rounds(&x[0], &x[1], &buckets, &p, t, mode, path.kernel, slice);
                        vec![out, lse] // (B, 1, r, Tp, Dh), (B, 1, r, Tp, 1)
                    };
                    let [out, lse] = <[Tensor; 2]>::try_from(checkpoint(&inputs, 2, attend)).expect("two outputs");
                    (out, lse)
                })
                .unzip();
            p.rule.weigh_rounds(&Tensor::cat(&outs, 2), &Tensor::cat(&lses, 2)) // (B, 1, Tp, Dh)
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
    let kernel = LshKernel::choose(&p, qk.kind(), qk.device(), mode);
    attend_rounds(&qk, &v, &buckets, &p, t, mode, kernel, Slice::whole(h, p.n_hashes))
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
pub(super) fn padded_buckets(qk: &Tensor, rotations: &Tensor, p: &LshParams, t: i64, mode: ForwardMode) -> Tensor {
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
/// are padding. Through `kernel`: the fused kernel (`lsh_fused`), or batched, all
/// chunks' windows, masks and probabilities materialised at once.
///
/// # Shapes
/// `qk`, `v`: (B, h, Tp, Dh); `buckets`: (B, h, r, Tp); returns the outputs
/// (B, h, r, Tp, Dh) and their log-sum-exps (B, h, r, Tp, 1).
#[allow(clippy::too_many_arguments)]
fn attend_rounds(
    qk: &Tensor,
    v: &Tensor,
    buckets: &Tensor,
    p: &LshParams,
    t: i64,
    mode: ForwardMode,
    kernel: LshKernel,
    slice: Slice,
) -> (Tensor, Tensor) {
    let sticker = sort_slots(buckets, p.hash.n_buckets); // (B, h, r*Tp): slot -> round*Tp + position
    let LshKernel::Fused(isa) = kernel else {
        return attend_batched(qk, v, buckets, &sticker, p, t, mode, slice);
    };
    let q = if p.scale_logits { qk * (qk.size()[3] as f64).powf(-0.5) } else { qk.shallow_clone() };
    lsh_fused::attend_rounds_with(isa, &q, &normalize(qk), v, &sticker, buckets, WindowRules::new(p, t))
}

/// `attend_rounds` on the batched path, the fused kernel's reference.
///
/// # Shapes
/// `qk`, `v`: (B, h, Tp, Dh); `buckets`: (B, h, r, Tp); `sticker`: (B, h, r*Tp); returns
/// (B, h, r, Tp, Dh) and (B, h, r, Tp, 1).
#[allow(clippy::too_many_arguments)]
fn attend_batched(
    qk: &Tensor,
    v: &Tensor,
    buckets: &Tensor,
    sticker: &Tensor,
    p: &LshParams,
    t: i64,
    mode: ForwardMode,
    slice: Slice,
) -> (Tensor, Tensor) {
    let (b, h, t_pad, dh) = qk.size4().unwrap();
    let (r, c) = (buckets.size()[2], p.chunk_len);
    let n_chunks = t_pad / c; // chunks per round
    let undo_sort = undo_sort(sticker); // (B, h, r*Tp): round*Tp + position -> slot
    let s_pos = sticker.remainder(t_pad); // (B, h, r*Tp) original position of each slot

    // Chunks of the sorted sequence, each with its window of neighbours (the rule's).
    let (before, after) = (p.n_chunks_before, p.n_chunks_after);
    let window = |x: &Tensor, fill: f64| p.rule.windows(&x.view([b, h, r, n_chunks, c, -1]), before, after, fill);
    let sqk = gather_rows(qk, &s_pos); // (B, h, r*Tp, Dh)
    let sq = sqk.view([b, h, r, n_chunks, c, dh]); // (B, h, r, NC, C, Dh)
    let sq = if p.scale_logits { sq * (dh as f64).powf(-0.5) } else { sq };
    let sk = window(&normalize(&sqk), 0.0); // (B, h, r, NC, W, Dh) unit-length keys
    let sv = window(&gather_rows(v, &s_pos), 0.0); // (B, h, r, NC, W, Dh)

    // Masked and normalised in float32 under autocast: the mask constants are finite
    // there, and the log-sum-exps that weigh the rounds keep their precision.
    let mut logits = at_least_float32(&sq.matmul(&sk.transpose(-1, -2))); // (B, h, r, NC, C, W)

    // Masks on original positions; -1 marks a neighbour chunk outside the round.
    let q_pos = s_pos.view([b, h, r, n_chunks, c]);
    let k_pos = window(&q_pos.unsqueeze(-1), -1.0).squeeze_dim(-1).unsqueeze(-2); // (B, h, r, NC, 1, W)
    let q_pos = q_pos.unsqueeze(-1); // (B, h, r, NC, C, 1)
    let invalid = k_pos.lt(0).logical_or(&k_pos.ge(t)); // (B, h, r, NC, 1, W) outside the round, padding
    let hidden = if p.causal {
        // Invalid keys compare as later than every query: one full-size comparison.
        k_pos.masked_fill(&invalid, i64::MAX).gt_tensor(&q_pos) // (B, h, r, NC, C, W)
    } else {
        invalid
    };
    let hidden = match p.rule.hidden_by_rule(buckets, sticker, p, [b, h, r, n_chunks, c]) {
        Some(by_rule) => hidden.logical_or(&by_rule),
        None => hidden,
    };
    p.rule.mask_logits(&mut logits, &hidden, &k_pos, &q_pos, before * c);

    let (probs, lse, row_scale) = p.rule.window_softmax(&logits); // (B, h, r, NC, C, W), 2 × (B, h, r, NC, C, 1)
    let whole = [b, slice.n_heads, slice.n_rounds, n_chunks, c, logits.size()[5]];
    let offset = [0, slice.head, slice.round, 0, 0, 0];
    let probs = mode.child(DROPOUT_TAG).dropout_block(&probs, p.dropout, &whole, &offset);
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
