//! What several test files share: the tiny model they check.

use reformer::model::config::{LocalConfig, LshConfig};
use reformer::model::{AttentionKind, ModelConfig, PositionalConfig};

/// Three blocks (LSH, local, full attention) of width 32 over at most 64 tokens: two heads,
/// chunks of 8, two hash rounds, axial positions, no dropout, ordinary residuals.
pub fn tiny_model_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 32,
        d_model: 32,
        n_layers: 3,
        n_heads: 2,
        d_ff: 64,
        max_seq_len: 64,
        positional: PositionalConfig::Axial { shape: [8, 8], dims: [16, 16] },
        attention: vec![AttentionKind::Lsh, AttentionKind::Local, AttentionKind::Full],
        lsh: LshConfig { chunk_len: 8, n_hashes: 2, ..Default::default() },
        local: LocalConfig { chunk_len: 8, ..Default::default() },
        reversible: false,
        ..Default::default()
    }
}
