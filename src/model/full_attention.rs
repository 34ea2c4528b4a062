//! Full (dense) multi-head attention over the whole sequence: the baseline that LSH
//! attention is measured against.

use tch::{nn, Tensor};

use super::config::ModelConfig;
use super::qkv::QkvProjection;
use super::seeded_random::ForwardMode;
use super::softmax_attention::softmax_attention;

#[derive(Debug)]
pub struct FullAttention {
    projection: QkvProjection,
    causal: bool,
    dropout: f64,
}

impl FullAttention {
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        Self { projection: QkvProjection::new(&vs, cfg), causal: cfg.causal, dropout: cfg.dropout_attention }
    }

    /// # Shapes
    /// `x`: (B, T, D); returns (B, T, D).
    pub fn forward(&self, x: &Tensor, mode: ForwardMode) -> Tensor {
        let [q, k, v] = self.projection.heads(x); // (B, H, T, Dh)
        let out = softmax_attention(&q, &k, &v, None, self.causal, self.dropout, mode); // (B, H, T, Dh)
        self.projection.output(&out)
    }
}
