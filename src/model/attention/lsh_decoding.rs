//! Incremental decoding through an LSH attention layer under the strict window rule
//! (`lsh.window = "strict"`): a query sees itself and, in each hash round, the `chunk_len`
//! most recent earlier tokens of its own bucket. That set depends only on the past, so
//! a new token's attention is found from per-bucket lists of recent positions, at a cost
//! that does not grow with the context: n_hashes × chunk_len keys per head.
//!
//! The paper's causal rule (attend within the query's chunk of the bucket-sorted
//! sequence and one chunk back) depends on where chunk boundaries fall in the sort of
//! the whole sequence, which changes as tokens arrive; a cache cannot reproduce it, so
//! decoding applies the strict rule to every LSH layer, prompt included.

use tch::Tensor;

use super::hashing::hash_buckets;
use super::kv_cache::KvCache;
use super::lsh::{gather_rows, lsh_attend, normalize, LshParams};
use super::lsh_layer::LshAttention;
use super::softmax::softmax_and_logsumexp;
use super::window_rule::{WindowRule, MASKED_LOGIT, SELF_LOGIT};
use crate::model::seeded_random::ForwardMode;
use crate::precision::at_least_float32;

/// Marks an empty slot in a bucket's list.
const NO_POSITION: i64 = -1;

/// For every (batch row, head, round) and bucket, the positions of the last `chunk_len`
/// tokens hashed there, in a ring (the order within a list does not matter to softmax).
#[derive(Debug)]
pub struct BucketRings {
    chunk_len: usize,
    n_buckets: usize,
    /// (streams, NB, C) flattened; NO_POSITION where empty.
    positions: Vec<i64>,
    /// (streams, NB) flattened: tokens ever inserted per list.
    counts: Vec<usize>,
}

impl BucketRings {
    /// Rings filled with the positions of `buckets`, in position order.
    ///
    /// # Shapes
    /// `buckets`: (B, H, R, P) int64.
    pub fn from_buckets(buckets: &Tensor, chunk_len: i64, n_buckets: i64) -> Self {
        let (b, h, r, p) = buckets.size4().unwrap();
        let streams = (b * h * r) as usize;
        let (chunk_len, n_buckets) = (chunk_len as usize, n_buckets as usize);
        let mut rings = Self {
            chunk_len,
            n_buckets,
            positions: vec![NO_POSITION; streams * n_buckets * chunk_len],
            counts: vec![0; streams * n_buckets],
        };
        let ids = Vec::<i64>::try_from(buckets.to_device(tch::Device::Cpu).reshape([-1])).expect("bucket ids");
        for (stream, row) in ids.chunks(p.max(1) as usize).enumerate() {
            for (position, &bucket) in row.iter().enumerate() {
                rings.insert(stream, bucket as usize, position as i64);
            }
        }
        rings
    }

    /// The `chunk_len` slots of one list (NO_POSITION where empty).
    pub fn recent(&self, stream: usize, bucket: usize) -> &[i64] {
        let start = (stream * self.n_buckets + bucket) * self.chunk_len;
        &self.positions[start..start + self.chunk_len]
    }

    /// Records `position` in its list, replacing the oldest when the list is full.
    pub fn insert(&mut self, stream: usize, bucket: usize, position: i64) {
        let list = stream * self.n_buckets + bucket;
        let slot = self.counts[list] % self.chunk_len;
        self.positions[list * self.chunk_len + slot] = position;
        self.counts[list] += 1;
    }
}

/// One LSH layer's decoding state.
#[derive(Debug)]
pub struct LshCache {
    /// Unit-length keys and the values of every position so far.
    kv: KvCache,
    rings: BucketRings,
    /// (1 or H, Dh, R, S): the layer's rotations, drawn once.
    rotations: Tensor,
}

impl LshAttention {
    /// The layer over a whole prompt under the strict rule, and its cache.
    ///
    /// # Shapes
    /// `x`: (B, P, D); returns (B, P, D).
    pub fn prefill(&self, x: &Tensor, mode: ForwardMode, capacity: i64) -> (Tensor, LshCache) {
        let (qk, v) = self.project(x); // (B, H, P, Dh) each
        let rotations = self.rotations(mode, x.device());
        let strict = LshParams { rule: WindowRule::Strict, ..self.params.clone() };
        let out = lsh_attend(&qk, &v, &rotations, &strict, mode); // (B, H, P, Dh)
        let buckets = hash_buckets(&qk, &rotations, &strict.hash); // (B, H, R, P)
        let rings = BucketRings::from_buckets(&buckets, strict.chunk_len, strict.hash.n_buckets);
        let cache = LshCache { kv: KvCache::new(&normalize(&qk), &v, capacity), rings, rotations };
        (self.output(&out), cache)
    }

    /// The layer for one new token at position `cache`'s length.
    ///
    /// # Shapes
    /// `x`: (B, 1, D); returns (B, 1, D).
    pub fn step(&self, x: &Tensor, cache: &mut LshCache) -> Tensor {
        let (qk, v) = self.project(x); // (B, H, 1, Dh) each
        let (b, h, _, dh) = qk.size4().unwrap();
        let (r, c) = (self.params.n_hashes, self.params.chunk_len);
        let position = cache.kv.len();

        // Each round's list for the new token's bucket, read before the token joins it.
        let buckets = hash_buckets(&qk, &cache.rotations, &self.params.hash); // (B, H, R, 1)
        let buckets = Vec::<i64>::try_from(buckets.to_device(tch::Device::Cpu).reshape([-1])).expect("bucket ids");
        let mut seen = Vec::with_capacity(buckets.len() * c as usize);
        for (stream, &bucket) in buckets.iter().enumerate() {
            seen.extend_from_slice(cache.rings.recent(stream, bucket as usize));
            cache.rings.insert(stream, bucket as usize, position);
        }
        let seen = Tensor::from_slice(&seen).to_device(x.device()).view([b, h, r * c]); // (B, H, R*C)

        // Keys and values of the listed positions; an empty slot reads row 0 and is masked.
        let (all_keys, all_values) = cache.kv.buffers();
        let index = seen.clamp_min(0);
        let keys = gather_rows(all_keys, &index).view([b, h, r, c, dh]); // (B, H, R, C, Dh)
        let values = gather_rows(all_values, &index).view([b, h, r, c, dh]); // (B, H, R, C, Dh)
        let query = qk.unsqueeze(2); // (B, H, 1, 1, Dh)
        let query = if self.params.scale_logits { query * (dh as f64).powf(-0.5) } else { query };
        let logits = at_least_float32(&query.matmul(&keys.transpose(-1, -2))); // (B, H, R, 1, C)
        let logits = logits.masked_fill(&seen.view([b, h, r, 1, c]).lt(0), MASKED_LOGIT);

        // The token's own key, visible at SELF_LOGIT as in the full pass.
        let own_logit = Tensor::full([b, h, r, 1, 1], SELF_LOGIT, (logits.kind(), logits.device()));
        let logits = Tensor::cat(&[logits, own_logit], -1); // (B, H, R, 1, C+1)
        let own_value = v.unsqueeze(2).expand([b, h, r, 1, dh], false); // (B, H, R, 1, Dh)
        let values = Tensor::cat(&[values, own_value], 3); // (B, H, R, C+1, Dh)

        let (probs, lse) = softmax_and_logsumexp(&logits); // (B, H, R, 1, C+1), (B, H, R, 1, 1)
        let out = WindowRule::Strict.weigh_rounds(&probs.to_kind(values.kind()).matmul(&values), &lse); // (B, H, 1, Dh)
        cache.kv.push(&normalize(&qk), &v);
        self.output(&out)
    }
}
