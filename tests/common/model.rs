//! The tiny model that the library's tests build, and weights drawn from explicit seeds.

use reformer::model::config::{ExecutionConfig, LocalConfig, LshConfig};
use reformer::model::{seeded_random, AttentionKind, ModelConfig, PositionalConfig};
use tch::{nn, Device, Kind, Tensor};

/// Sets every variable of `vs` from explicit seeds (libtorch's global generator is shared
/// by tests running in parallel threads, so models drawn from it differ between runs):
/// norms at scale 1 and shift 0, query/key matrices N(0, `qk_std`²), every other
/// tensor N(0, `std`²).
pub fn draw_weights(vs: &nn::VarStore, std: f64, qk_std: f64) {
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (i, (name, mut var)) in variables.into_iter().enumerate() {
            let value = if name.contains("norm") {
                Tensor::ones(var.size(), (Kind::Float, Device::Cpu)) * if name.ends_with("weight") { 1.0 } else { 0.0 }
            } else {
                let std = if name.ends_with("qk.weight") || name.ends_with("qkv.weight") { qk_std } else { std };
                seeded_random::normal(100 + i as u64, &var.size(), Device::Cpu) * std
            };
            var.copy_(&value.to_kind(var.kind()));
        }
    });
}

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
        execution: ExecutionConfig { reversible: false, ..Default::default() },
        ..Default::default()
    }
}
