//! The attention layers a block's F can be, and what they share. LSH attention
//! (`lsh`, paper §2: shared query/key, hashing by random rotations, sort, chunk, attend
//! within a chunk and one back) with its layer (`lsh_layer`), its settings
//! (`lsh_params`), its window rule (`window_rule`), the choice of how a call computes
//! (`lsh_path`), its fused CPU kernel (`lsh_fused`), its incremental decoding
//! (`lsh_decoding`) and the partner-reach diagnostic (`partner_reach`); local
//! attention over fixed chunks (`local`); full attention (`full`). Shared pieces: the
//! angular hash (`hashing`), the sort of each round by bucket (`bucket_sort`), the
//! softmax over a window with its masks and dropout (`softmax`), separate Q/K/V
//! projections (`qkv`), chunks and their neighbours (`chunking`), and the key/value
//! cache of decoding (`kv_cache`).

pub mod bucket_sort;
pub mod bucket_tape;
pub mod chunking;
pub mod full;
pub mod hashing;
pub mod kv_cache;
pub mod local;
pub mod lsh;
pub mod lsh_decoding;
pub mod lsh_fused;
#[cfg(test)]
mod lsh_fused_tests;
pub mod lsh_layer;
pub mod lsh_params;
pub mod lsh_path;
pub mod partner_reach;
pub mod qkv;
pub mod softmax;
pub mod window_rule;

use tch::{nn, Tensor};

use super::config::{AttentionKind, ModelConfig};
use super::seeded_random::ForwardMode;
use full::FullAttention;
use local::LocalAttention;
use lsh_layer::LshAttention;

/// One block's attention layer.
#[derive(Debug)]
pub enum Attention {
    Lsh(LshAttention),
    Local(LocalAttention),
    Full(FullAttention),
}

impl Attention {
    pub fn new(vs: nn::Path, cfg: &ModelConfig, kind: AttentionKind) -> Self {
        match kind {
            AttentionKind::Lsh => Self::Lsh(LshAttention::new(vs, cfg)),
            AttentionKind::Local => Self::Local(LocalAttention::new(vs, cfg)),
            AttentionKind::Full => Self::Full(FullAttention::new(vs, cfg)),
        }
    }

    /// The trainable tensors.
    pub fn parameters(&self) -> Vec<Tensor> {
        match self {
            Self::Lsh(a) => a.parameters(),
            Self::Local(a) => a.projection.parameters(),
            Self::Full(a) => a.projection.parameters(),
        }
    }

    /// # Shapes
    /// `x`: (B, T, D); returns (B, T, D).
    pub fn forward(&self, x: &Tensor, mode: ForwardMode) -> Tensor {
        match self {
            Self::Lsh(a) => a.forward(x, mode),
            Self::Local(a) => a.forward(x, mode),
            Self::Full(a) => a.forward(x, mode),
        }
    }
}
