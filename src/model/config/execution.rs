//! How the model is computed, where the choice does not change the result (within
//! float32 rounding): memory against time. The memory planner owns these.

use serde::{Deserialize, Serialize};

use super::settings::settings;

settings! {
    /// Ways of computing the same function (`model.execution`).
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct ExecutionConfig {
        /// Run the block stack through the memory-saving reversible backward.
        pub reversible: bool = true,
        /// Attention one slice at a time under activation checkpointing: LSH one (head,
        /// round), local attention one head. Only one slice's attention tensors exist at
        /// once, in the forward and in the backward, at the price of computing each
        /// slice's forward once more.
        pub sliced_attention: bool = false,
        /// Positions per feed-forward chunk; null applies it to the whole sequence at once.
        pub ff_chunk_len: Option<i64> = None,
        /// Positions per chunk of the output layer and loss; null: all at once.
        pub loss_chunk_len: Option<i64> = None,
        /// LSH attention through the fused CPU kernel: the same function without the
        /// (rounds × positions × window) masks and probabilities. It applies on the CPU in
        /// float32/float64; CUDA, autocast's half precision, the released window rule and
        /// attention dropout while training take the batched path (`reformer bench` says
        /// which path each case ran). false: always the batched path.
        pub fused_lsh: bool = true,
        /// Rows of a training step's batch per forward and backward pass; the step's batch
        /// is computed this many rows at a time and the gradients summed, with the whole
        /// batch's rotations, dropout masks and loss weights (the same step, less memory).
        /// null: the whole batch at once.
        pub micro_batch_rows: Option<i64> = None,
        /// Rows per forward pass when scoring (validation, test, `reformer eval`); null: a
        /// whole scoring batch at once. The scores do not depend on it.
        pub scoring_rows: Option<i64> = None,
    }
}

impl ExecutionConfig {
    /// Positions per loss chunk over `len` positions (all of them when not chunked).
    pub fn loss_chunk(&self, len: i64) -> i64 {
        at_most(self.loss_chunk_len, len)
    }

    /// Positions per feed-forward chunk over `len` positions (all of them when not chunked).
    pub fn ff_chunk(&self, len: i64) -> i64 {
        at_most(self.ff_chunk_len, len)
    }

    /// Rows per training pass of a batch of `rows` (all of them without micro-batches).
    pub fn pass_rows(&self, rows: i64) -> i64 {
        at_most(self.micro_batch_rows, rows)
    }

    /// Rows per scoring pass of a batch of `rows` (all of them when not split).
    pub fn scoring_pass_rows(&self, rows: i64) -> i64 {
        at_most(self.scoring_rows, rows)
    }
}

/// A piece of `setting` size out of `whole`: the whole when unset, never more.
fn at_most(setting: Option<i64>, whole: i64) -> i64 {
    setting.unwrap_or(whole).min(whole)
}
