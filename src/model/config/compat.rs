//! Where the released checkpoints (Trax, as transformers reproduces them) compute what
//! the paper leaves open or describes otherwise, their behaviour is a setting here; the
//! defaults are the paper's reading, and `reformer import` sets the released ones. (The
//! released models' chunk windows are `lsh.window = "released"`.) The released models
//! match the paper in everything else: shared query/key with unit-length keys, the
//! self-mask value (−1e5), no duplicate-attention correction, keys of other buckets
//! inside a window visible.

use serde::{Deserialize, Serialize};

use super::settings::settings;

/// The nonlinearity of the feed-forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Gelu,
    /// The released Reformer checkpoints' (transformers' `hidden_act: "relu"`).
    Relu,
}

settings! {
    /// The released form's settings (`model.compat`).
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct CompatConfig {
        /// Byte b is token b + token_offset; the ids below are reserved and never input
        /// nor sampled, though the loss is a softmax over the whole vocabulary (the
        /// released enwik8 model: 2, with 0 its padding).
        pub token_offset: i64 = 0,
        /// The feed-forward's nonlinearity (the released checkpoints: relu).
        pub activation: Activation = Activation::Gelu,
        /// The ε of every LayerNorm (the released checkpoints: 1e-12).
        pub layer_norm_eps: f64 = 1e-5,
        /// A bias in the attention output projection (the released checkpoints have none).
        pub attention_output_bias: bool = true,
        /// Divide the LSH logits by √d_head. The released checkpoints do not: their logits
        /// are raw query · unit-length key.
        pub scale_lsh_logits: bool = true,
        /// LSH rotations per head from a generator seeded with this value: the same draw
        /// in every LSH layer and every forward (transformers' `hash_seed`, drawn as it
        /// draws them on the CPU in float32; with it, a model computes the same function
        /// on every call). null: fresh rotations each forward, shared by the heads,
        /// derived from the run's seed and the step.
        pub lsh_hash_seed: Option<u64> = None,
    }
}
