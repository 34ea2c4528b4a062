//! `ModelConfig`: every size and switch of the Reformer LM, with its default and unit,
//! validated once (`validation`), grouped by meaning: the architecture (the paper's) at
//! the top with the attention layers' settings (`attention`), the released checkpoints'
//! departures from the paper's reading (`compat`), and the ways of computing the same
//! function (`execution`). Saved as `config.json` beside the weights; configs of earlier
//! releases load through `legacy`.

mod attention;
mod compat;
mod execution;
pub mod legacy;
mod settings;
mod validation;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use self::attention::{LocalConfig, LshConfig};
pub use self::compat::{Activation, CompatConfig};
pub use self::execution::ExecutionConfig;
use self::settings::settings;
pub use crate::model::attention::window_rule::WindowRule;

/// The attention of one layer; `ModelConfig::attention` cycles a list of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    /// LSH attention with shared query/key (paper §2-3).
    Lsh,
    /// Chunked local attention: a chunk attends to itself and chunks before it.
    Local,
    /// Dense attention over the whole sequence (libtorch SDPA); the baseline.
    Full,
}

/// How positions enter the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum PositionalConfig {
    /// Axial embeddings: position p = (p / A2, p % A2) looks up two tables of A1 and A2
    /// rows whose widths `dims` sum to d_model (2·√T rows instead of T).
    Axial { shape: [i64; 2], dims: [i64; 2] },
    /// One learned row per position up to max_seq_len.
    Learned,
    /// No positional information.
    None,
}

const DEFAULT_POSITIONAL: PositionalConfig = PositionalConfig::Axial { shape: [32, 32], dims: [128, 128] };

settings! {
    /// The whole model. Every field has a default, so a JSON file need only name changes.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(remote = "Self", deny_unknown_fields, default)]
    pub struct ModelConfig {
        /// Vocabulary size (256: bytes).
        pub vocab_size: i64 = 256,
        /// Width of each residual stream.
        pub d_model: i64 = 256,
        /// Number of two-stream blocks.
        pub n_layers: i64 = 2,
        /// Attention heads.
        pub n_heads: i64 = 4,
        /// Width of one head; null: d_model / n_heads.
        pub d_head: Option<i64> = None,
        /// Hidden width of the feed-forward.
        pub d_ff: i64 = 1024,
        /// Dropout on the embedding and on each residual branch's output.
        pub dropout_hidden: f64 = 0.0,
        /// Dropout on attention probabilities. Above 0, training LSH layers take the
        /// batched path instead of the fused kernel (`execution.fused_lsh`).
        pub dropout_attention: f64 = 0.0,
        /// Dropout inside the feed-forward, after its activation.
        pub dropout_ff: f64 = 0.0,
        /// Causal (language model) masking.
        pub causal: bool = true,
        /// Longest sequence the model accepts, in tokens.
        pub max_seq_len: i64 = 1024,
        /// Positional embedding.
        pub positional: PositionalConfig = DEFAULT_POSITIONAL,
        /// Attention kinds, cycled over the layers.
        pub attention: Vec<AttentionKind> = vec![AttentionKind::Lsh],
        /// LSH layer settings.
        pub lsh: LshConfig = LshConfig::default(),
        /// Local layer settings.
        pub local: LocalConfig = LocalConfig::default(),
        /// The released checkpoints' departures from the paper's reading.
        pub compat: CompatConfig = CompatConfig::default(),
        /// Ways of computing the same function (memory against time).
        pub execution: ExecutionConfig = ExecutionConfig::default(),
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    /// Reads the current layout and, through `legacy::migrate`, every earlier one.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut value = serde_json::Value::deserialize(deserializer)?;
        legacy::migrate(&mut value).map_err(D::Error::custom)?;
        ModelConfig::deserialize(value).map_err(D::Error::custom)
    }
}

impl Serialize for ModelConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ModelConfig::serialize(self, serializer)
    }
}

impl ModelConfig {
    /// Width of one attention head.
    pub fn d_head(&self) -> i64 {
        self.d_head.unwrap_or(self.d_model / self.n_heads.max(1))
    }

    /// The least common multiple of the chunk lengths of the model's chunked attention
    /// kinds, and the shortest of them (None without LSH or local layers): a sequence
    /// longer than the shortest is padded to a multiple of the first under the released
    /// window rule, as transformers pads its input.
    pub fn chunk_lengths(&self) -> Option<(i64, i64)> {
        let lengths: Vec<i64> = (0..self.n_layers)
            .filter_map(|i| match self.attention_of_layer(i) {
                AttentionKind::Lsh => Some(self.lsh.chunk_len),
                AttentionKind::Local => Some(self.local.chunk_len),
                AttentionKind::Full => None,
            })
            .collect();
        let shortest = *lengths.iter().min()?;
        Some((lengths.iter().fold(1, |lcm, &c| lcm / gcd(lcm, c) * c), shortest))
    }

    /// How many layers are LSH attention.
    pub fn n_lsh_layers(&self) -> i64 {
        (0..self.n_layers).filter(|&i| self.attention_of_layer(i) == AttentionKind::Lsh).count() as i64
    }

    /// The attention kind of layer `i` (the pattern is cycled).
    pub fn attention_of_layer(&self, i: i64) -> AttentionKind {
        self.attention[i as usize % self.attention.len()]
    }
}

/// The greatest common divisor (Euclid).
fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
