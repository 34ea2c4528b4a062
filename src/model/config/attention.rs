//! The settings of the chunked attention layers: LSH (paper §2-3) and local.

use serde::{Deserialize, Serialize};

use super::settings::settings;
use crate::model::attention::window_rule::WindowRule;
use crate::model::hash_buckets::FACTORISE_ABOVE;

settings! {
    /// Settings of the LSH attention layers.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct LshConfig {
        /// Hash rounds.
        pub n_hashes: i64 = 4,
        /// Tokens per chunk of the sorted sequence.
        pub chunk_len: i64 = 64,
        /// Buckets per round, even; null: derived from max_seq_len, about 2·T/chunk_len
        /// (or the product of `bucket_factors`).
        pub n_buckets: Option<i64> = None,
        /// When neither `n_buckets` nor `bucket_factors` is set and the derived bucket
        /// count is above this, the buckets are factorised into two even factors as close
        /// as possible (512 = 16 · 32), so that a round's rotation costs
        /// d_head · (f1 + f2)/2 per token instead of d_head · n_buckets/2, which grows
        /// with the length (models up to 4,096 tokens with chunks of 64 hash as before).
        /// null: never. A run folder's config.json records the bucket count and factors
        /// it resolved to.
        pub factorise_above: Option<i64> = Some(FACTORISE_ABOVE),
        /// Factorised hashing (the released crime-and-punishment model's `[64, 128]`): one
        /// rotation of sum(factors)/2 columns, cut into a slice per factor; the bucket is
        /// the mixed-radix number of the slices' angular hashes, so n_buckets =
        /// product(factors). Empty: one hash of n_buckets.
        pub bucket_factors: Vec<i64> = Vec::new(),
        /// Chunks before its own that a chunk attends to.
        pub n_chunks_before: i64 = 1,
        /// Chunks after its own that a chunk attends to (must be 0 when causal).
        pub n_chunks_after: i64 = 0,
        /// Which keys a query's window offers: "paper" (each round's chunks and their
        /// neighbours), "strict" (strictly causal: own bucket, the `chunk_len` most recent)
        /// or "released" (the released checkpoints' ring of rounds; see `WindowRule`).
        pub window: WindowRule = WindowRule::Paper,
    }
}

settings! {
    /// Settings of the local attention layers.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct LocalConfig {
        /// Tokens per chunk.
        pub chunk_len: i64 = 128,
        /// Chunks before its own that a chunk attends to.
        pub n_chunks_before: i64 = 1,
        /// Chunks after its own that a chunk attends to (must be 0 when causal).
        pub n_chunks_after: i64 = 0,
    }
}
