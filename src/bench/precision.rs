//! How much precision the reversible backward loses: every block's inputs are rebuilt
//! from the stack's output by subtraction (x2 = y2 − G(y1), x1 = y1 − F(x2)), as the
//! backward rebuilds them, and compared with the inputs the forward actually saw.

use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use crate::model::reversible::reconstruct_inputs;
use crate::model::{AttentionKind, ForwardMode, ModelConfig, PositionalConfig, ReformerLm};

#[derive(Debug, Serialize)]
pub struct ReconstructionError {
    pub n_layers: i64,
    pub dtype: String,
    /// max over blocks of ‖rebuilt − true‖ / ‖true‖ (both streams), for the first block
    /// (the error accumulated over the whole depth) and the worst block.
    pub first_block: f64,
    pub worst_block: f64,
}

fn relative(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    ((&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)).max(0.0)
}

/// The reconstruction error of an LM of `n_layers` [local, lsh] blocks (D 256, 4 heads,
/// d_ff 1024, dropout 0.1) on random bytes, in `kind` arithmetic.
pub fn measure(n_layers: i64, kind: Kind, seq_len: i64, device: Device) -> ReconstructionError {
    let mut cfg = ModelConfig {
        n_layers,
        max_seq_len: seq_len,
        positional: PositionalConfig::Learned,
        attention: vec![AttentionKind::Local, AttentionKind::Lsh],
        dropout_hidden: 0.1,
        dropout_attention: 0.1,
        dropout_ff: 0.1,
        ..Default::default()
    };
    cfg.lsh.chunk_len = 64;
    tch::manual_seed(1);
    let mut vs = nn::VarStore::new(device);
    let model = ReformerLm::new(vs.root(), &cfg);
    vs.set_kind(kind);
    let tokens = Tensor::randint(256, [1, seq_len], (Kind::Int64, device));
    let mode = ForwardMode::train(7);
    tch::no_grad(|| {
        let x = model.embed(&tokens, mode);
        let mut inputs = Vec::new();
        let (mut x1, mut x2) = (x.shallow_clone(), x);
        for (i, block) in model.blocks.iter().enumerate() {
            inputs.push((x1.shallow_clone(), x2.shallow_clone()));
            (x1, x2) = block.forward(&x1, &x2, mode.child(i as u64));
        }
        let rebuilt = reconstruct_inputs(&model.blocks, &x1, &x2, mode);
        let errors: Vec<f64> =
            inputs.iter().zip(&rebuilt).map(|((a1, a2), (b1, b2))| relative(b1, a1).max(relative(b2, a2))).collect();
        ReconstructionError {
            n_layers,
            dtype: format!("{kind:?}"),
            first_block: errors[0],
            worst_block: errors.iter().cloned().fold(0.0, f64::max),
        }
    })
}
