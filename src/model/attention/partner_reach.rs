//! Partner reach (issue 26), a diagnostic of LSH attention (paper §2.3's chunked windows
//! over each round's bucket-sorted order): the fraction of scored queries whose partner,
//! the key `offset` positions back that the task asks the query to read, lies in the
//! query's window in at least one hash round. A query cannot attend to, nor receive
//! gradient towards, a key outside all its windows: in the duplication task the fraction
//! says how often a layer can see what it must learn to copy.
//!
//! Visible means what the layer's forward would let the query see: the partner's slot in
//! a chunk from chunk(q) − n_chunks_before to chunk(q) + n_chunks_after of the same round,
//! not masked (the partner is earlier, so the causal mask keeps it); under the strict rule
//! also in the query's bucket and 0..=chunk_len slots before it. Under the released rule
//! only the same-round check is made: its ring's cross-round neighbours (a round's first
//! chunk looking back at the previous round's last) are not counted.

use tch::{Kind, Tensor};

use super::bucket_sort::{sort_slots, undo_sort};
use super::lsh_params::LshParams;
use crate::model::lm::ReformerLm;
use crate::model::seeded_random::ForwardMode;

/// The partner reach of each LSH layer of `model` over `tokens`, in layer order: the
/// model runs block by block without gradients, and each LSH layer's buckets are taken
/// on its attention input under the mode that a forward in `mode` gives that layer (so
/// with the rotations of that forward). Other layers add no entry.
///
/// # Shapes
/// `tokens`: (B, T) int64; `scored`: (B, T) bool.
pub fn partner_reach_per_layer(
    model: &ReformerLm,
    tokens: &Tensor,
    scored: &Tensor,
    offset: i64,
    mode: ForwardMode,
) -> Vec<f64> {
    tch::no_grad(|| {
        let x = model.embed(tokens, mode); // (B, T, D)
        let mut streams = (x.shallow_clone(), x);
        let mut reach = Vec::new();
        for (i, block) in model.blocks.iter().enumerate() {
            let block_mode = mode.child(i as u64);
            if let Some((buckets, p)) = block.lsh_buckets(&streams.1, block_mode) {
                reach.push(partner_reach(&buckets, p, offset, scored));
            }
            streams = block.forward(&streams.0, &streams.1, block_mode);
        }
        reach
    })
}

/// The fraction of scored queries, over the batch rows and heads, whose partner `offset`
/// positions back is in their window in at least one round. A scored query with no
/// partner (before `offset`) counts as not reached; without scored queries, 0.
///
/// # Shapes
/// `buckets`: (B, H, R, Tp) int64, padding in bucket n_buckets (as
/// `LshAttention::buckets` returns them); `scored`: (B, T) bool, T ≤ Tp.
pub fn partner_reach(buckets: &Tensor, p: &LshParams, offset: i64, scored: &Tensor) -> f64 {
    assert!(offset > 0, "the partner is an earlier position: offset {offset} must be positive");
    let n_heads = buckets.size()[1];
    let t = scored.size()[1];
    let n_scored = scored.to_kind(Kind::Float).sum(Kind::Float).double_value(&[]) * n_heads as f64;
    if t <= offset || n_scored == 0.0 {
        return 0.0;
    }
    let n = t - offset;
    let in_some_round = partner_in_window(buckets, p, offset).any_dim(2, false).narrow(2, 0, n); // (B, H, n)
    let scored_queries = scored.narrow(1, offset, n).unsqueeze(1); // (B, 1, n): queries offset..T
    let reached = in_some_round.logical_and(&scored_queries).sum(Kind::Float).double_value(&[]);
    reached / n_scored
}

/// Whether query `offset + j` sees its partner `j` in each round.
///
/// # Shapes
/// `buckets`: (B, H, R, Tp); returns (B, H, R, Tp − offset) bool.
fn partner_in_window(buckets: &Tensor, p: &LshParams, offset: i64) -> Tensor {
    let t_pad = buckets.size()[3];
    let p = p.for_padded_len(t_pad);
    let c = p.chunk_len;
    let slot = slots_in_round(buckets, p.hash.n_buckets); // (B, H, R, Tp)
    let n = t_pad - offset;
    let q_slot = slot.narrow(3, offset, n); // (B, H, R, n)
    let k_slot = slot.narrow(3, 0, n); // (B, H, R, n)
    let chunk_gap = k_slot.floor_divide_scalar(c) - q_slot.floor_divide_scalar(c); // (B, H, R, n)
    let in_window = chunk_gap.ge(-p.n_chunks_before).logical_and(&chunk_gap.le(p.n_chunks_after));
    if !p.rule.reads_buckets() {
        return in_window;
    }
    // The strict rule: the query's own bucket, at most chunk_len slots back.
    let same_bucket = buckets.narrow(3, offset, n).eq_tensor(&buckets.narrow(3, 0, n)); // (B, H, R, n)
    let slots_back = &q_slot - &k_slot; // (B, H, R, n)
    in_window.logical_and(&same_bucket).logical_and(&slots_back.ge(0)).logical_and(&slots_back.le(c))
}

/// Each position's slot in its round's sorted order (0..Tp): `sort_slots` inverted.
///
/// # Shapes
/// `buckets`: (B, H, R, Tp); returns (B, H, R, Tp) int64.
pub fn slots_in_round(buckets: &Tensor, n_buckets: i64) -> Tensor {
    let (b, h, r, t_pad) = buckets.size4().unwrap();
    let undo = undo_sort(&sort_slots(buckets, n_buckets)); // (B, H, R·Tp): round·Tp + position -> slot
    let round_start = Tensor::arange(r, (Kind::Int64, buckets.device())).view([r, 1]) * t_pad; // (R, 1)
    undo.view([b, h, r, t_pad]) - round_start // (B, H, R, Tp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention::window_rule::WindowRule;

    /// Agreement of two fractions computed in different orders.
    const TOLERANCE: f64 = 1e-12;

    /// Settings of `n_hashes` rounds of `n_buckets`, chunks of `chunk_len`, causal.
    fn params(rule: WindowRule, n_buckets: i64, chunk_len: i64, before: i64, after: i64) -> LshParams {
        let mut p = LshParams::default();
        p.hash.n_buckets = n_buckets;
        p.hash.factors.clear();
        p.chunk_len = chunk_len;
        p.n_chunks_before = before;
        p.n_chunks_after = after;
        p.rule = rule;
        p.causal = true;
        p
    }

    /// The same count written out: each round sorted by (bucket, position) with a Rust
    /// sort, each query's window listed slot by slot, each key in it checked against the
    /// masks the layer applies (causal, padding, self, and under the strict rule bucket
    /// and distance).
    fn brute_force(buckets: &Tensor, p: &LshParams, t: i64, offset: i64, scored: &[Vec<bool>]) -> f64 {
        let (b, h, r, t_pad) = buckets.size4().unwrap();
        let all = Vec::<i64>::try_from(buckets.flatten(0, -1)).unwrap();
        let (c, n_chunks) = (p.chunk_len, t_pad / p.chunk_len);
        let (mut reached, mut total) = (0usize, 0usize);
        for row in 0..b {
            for head in 0..h {
                let mut seen = vec![false; t_pad as usize];
                for round in 0..r {
                    let bucket = |pos: i64| all[(((row * h + head) * r + round) * t_pad + pos) as usize];
                    let mut order: Vec<i64> = (0..t_pad).collect();
                    order.sort_by_key(|&pos| (bucket(pos), pos));
                    for (q_slot, &q) in order.iter().enumerate() {
                        let q_chunk = q_slot as i64 / c;
                        for k_chunk in q_chunk - p.n_chunks_before..=q_chunk + p.n_chunks_after {
                            if k_chunk < 0 || k_chunk >= n_chunks {
                                continue;
                            }
                            for k_slot in k_chunk * c..(k_chunk + 1) * c {
                                let k = order[k_slot as usize];
                                let back = q_slot as i64 - k_slot;
                                let mut visible = k <= q && k < t && k != q;
                                if p.rule == WindowRule::Strict {
                                    visible &= bucket(k) == bucket(q) && (0..=c).contains(&back);
                                }
                                if visible && k == q - offset {
                                    seen[q as usize] = true;
                                }
                            }
                        }
                    }
                }
                for q in 0..t as usize {
                    if scored[row as usize][q] {
                        total += 1;
                        reached += seen[q] as usize;
                    }
                }
            }
        }
        reached as f64 / total as f64
    }

    /// `scored` as the (B, T) bool tensor the diagnostic takes.
    fn scored_tensor(scored: &[Vec<bool>]) -> Tensor {
        let flat: Vec<bool> = scored.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([scored.len() as i64, -1])
    }

    #[test]
    fn the_reach_equals_a_brute_force_count_under_each_rule() {
        tch::manual_seed(26);
        let (b, h, r, t, c) = (2, 3, 3, 21, 4);
        let t_pad = 24;
        let positions = Tensor::arange(t_pad, (Kind::Int64, tch::Device::Cpu));
        // Scored queries on a fixed pattern, some before the partner offsets.
        let scored: Vec<Vec<bool>> = (0..b).map(|row| (0..t).map(|q| (7 * q + row) % 3 != 0).collect()).collect();
        let scored_t = scored_tensor(&scored);
        for n_buckets in [2, 4, 8] {
            let buckets = Tensor::randint(n_buckets, [b, h, r, t_pad], (Kind::Int64, tch::Device::Cpu))
                .masked_fill(&positions.ge(t), n_buckets); // padding in the extra bucket
            for (rule, before, after) in
                [(WindowRule::Paper, 1, 0), (WindowRule::Paper, 1, 1), (WindowRule::Strict, 1, 0)]
            {
                let p = params(rule, n_buckets, c, before, after);
                for offset in [1, 5, 9] {
                    let ours = partner_reach(&buckets, &p, offset, &scored_t);
                    let expected = brute_force(&buckets, &p, t, offset, &scored);
                    let case = format!("{rule:?} before {before} after {after}, {n_buckets} buckets, offset {offset}");
                    assert!((ours - expected).abs() < TOLERANCE, "{case}: {ours} against {expected}");
                    assert!((0.0..1.0).contains(&ours), "{case}: {ours} (a case that tests nothing)");
                }
            }
        }
    }

    #[test]
    fn a_partner_in_the_chunk_before_is_reached_by_the_paper_rule_and_too_far_back_for_the_strict_one() {
        // Buckets by hand: even positions in bucket 0 (slots 0..4), odd ones in bucket 1
        // (slots 4..8); chunks of 2 slots. Query 6 (slot 3, chunk 1) and its partner 0
        // (slot 0, chunk 0), query 7 (slot 7, chunk 3) and its partner 1 (slot 4, chunk 2):
        // each partner one chunk back, 3 slots back (more than a chunk).
        let buckets = Tensor::from_slice(&[0i64, 1, 0, 1, 0, 1, 0, 1]).view([1, 1, 1, 8]);
        let scored = scored_tensor(&[(0..8).map(|q| q >= 6).collect()]);
        let paper = params(WindowRule::Paper, 2, 2, 1, 0);
        let strict = params(WindowRule::Strict, 2, 2, 1, 0);
        assert_eq!(partner_reach(&buckets, &paper, 6, &scored), 1.0);
        assert_eq!(partner_reach(&buckets, &strict, 6, &scored), 0.0);
        // Two back: the slot just before, in the same bucket, seen under both rules.
        assert_eq!(partner_reach(&buckets, &paper, 2, &scored), 1.0);
        assert_eq!(partner_reach(&buckets, &strict, 2, &scored), 1.0);
        // One back: the other bucket, two chunks away or in a later chunk.
        assert_eq!(partner_reach(&buckets, &paper, 1, &scored), 0.0);
    }

    /// The diagnostic reads the buckets a forward in the same mode sorts by: it hashes
    /// under the same per-layer seeds (a tape that holds the forward's buckets gains no
    /// entry) the same attention inputs (the tape's buckets give the same reach as the
    /// diagnostic's own hashing).
    #[test]
    fn the_diagnostic_sees_the_buckets_of_a_forward_in_the_same_mode() {
        use crate::model::attention::bucket_tape::BucketTape;
        use crate::model::config::{AttentionKind, ModelConfig, PositionalConfig};

        let mut cfg = ModelConfig {
            vocab_size: 16,
            d_model: 32,
            n_layers: 3,
            n_heads: 2,
            d_ff: 64,
            max_seq_len: 64,
            positional: PositionalConfig::Learned,
            attention: vec![AttentionKind::Lsh, AttentionKind::Local],
            ..Default::default()
        };
        cfg.lsh.chunk_len = 8;
        cfg.lsh.n_hashes = 2;
        tch::manual_seed(7);
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let model = ReformerLm::new(vs.root(), &cfg);
        let tokens = Tensor::randint(16, [2, 31], (Kind::Int64, tch::Device::Cpu));
        let scored = Tensor::arange(31, (Kind::Int64, tch::Device::Cpu)).ge(16).expand([2, 31], false); // (B, T)
        let mode = ForwardMode::eval(3);
        let tape = BucketTape::default();
        let _ = tape.run(|| tch::no_grad(|| model.forward(&tokens, mode)));
        let recorded = tape.bytes();
        let own = partner_reach_per_layer(&model, &tokens, &scored, 15, mode);
        let forwards = tape.run(|| partner_reach_per_layer(&model, &tokens, &scored, 15, mode));
        assert_eq!(tape.bytes(), recorded, "the diagnostic hashed under seeds the forward did not use");
        assert_eq!(own.len(), 2, "layers 0 and 2 are LSH layers");
        assert_eq!(own, forwards);
    }

    #[test]
    fn slots_in_round_inverts_the_sort() {
        tch::manual_seed(5);
        let buckets = Tensor::randint(5, [2, 2, 3, 10], (Kind::Int64, tch::Device::Cpu));
        let sticker = sort_slots(&buckets, 4); // (2, 2, 30)
        let slot = slots_in_round(&buckets, 4); // (2, 2, 3, 10)
        let round = Tensor::arange(3, (Kind::Int64, tch::Device::Cpu)).view([3, 1]) * 10;
        let back = sticker.gather(2, &(slot + round).view([2, 2, 30]), false); // (2, 2, 30)
        assert!(back.equal(&Tensor::arange(30, (Kind::Int64, tch::Device::Cpu)).expand([2, 2, 30], false)));
    }
}
