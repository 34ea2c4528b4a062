//! Whether memory stays flat over many training steps through the reversible stack: a
//! leak of one tensor per step (or of the autograd node's Rust side) shows as RSS that
//! keeps growing after the allocator has warmed up.

use tch::{nn, Device, Kind, Tensor};

use crate::bench::case::process_memory;
use crate::model::{AttentionKind, ForwardMode, ModelConfig, PositionalConfig, ReformerLm};
use crate::optimizer::AdamW;
use crate::run_config::TrainConfig;

/// Steps between RSS samples.
const SAMPLE_EVERY: usize = 250;

/// Runs `steps` training steps of a small reversible model ([lsh, local, full], dropout
/// on) and returns (step, RSS in KiB) samples.
pub fn rss_over_steps(steps: usize, device: Device) -> Vec<(usize, i64)> {
    let mut cfg = ModelConfig {
        vocab_size: 64,
        d_model: 64,
        n_layers: 4,
        n_heads: 2,
        d_ff: 128,
        max_seq_len: 128,
        dropout_hidden: 0.1,
        dropout_attention: 0.1,
        positional: PositionalConfig::Learned,
        attention: vec![AttentionKind::Lsh, AttentionKind::Local, AttentionKind::Full],
        ..Default::default()
    };
    cfg.lsh.chunk_len = 16;
    cfg.lsh.n_hashes = 2;
    cfg.local.chunk_len = 16;
    let vs = nn::VarStore::new(device);
    let model = ReformerLm::new(vs.root(), &cfg);
    let mut optimizer = AdamW::new(&vs, &TrainConfig::default());
    let tokens = Tensor::randint(64, [4, 128], (Kind::Int64, device));
    let (inputs, targets) = (tokens.narrow(1, 0, 127), tokens.narrow(1, 1, 127));
    let mut samples = Vec::new();
    for step in 0..=steps {
        optimizer.zero_grad();
        model.loss(&inputs, &targets, None, ForwardMode::train(step as u64)).loss.backward();
        optimizer.step(1e-3);
        if step % SAMPLE_EVERY == 0 {
            samples.push((step, process_memory("VmRSS:") >> 10));
        }
    }
    samples
}
