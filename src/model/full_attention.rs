//! Full (dense) multi-head attention over the whole sequence: the baseline that LSH
//! attention is measured against.

use tch::{nn, Tensor};

use super::config::ModelConfig;
use super::lsh_attention::{merge_heads, split_heads};
use super::seeded_random::ForwardMode;
use super::softmax_attention::softmax_attention;

#[derive(Debug)]
pub struct FullAttention {
    qkv: nn::Linear,
    out: nn::Linear,
    n_heads: i64,
    d_head: i64,
    causal: bool,
    dropout: f64,
}

impl FullAttention {
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        let inner = cfg.n_heads * cfg.d_head();
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Self {
            qkv: nn::linear(&vs / "qkv", cfg.d_model, 3 * inner, no_bias),
            out: nn::linear(&vs / "out", inner, cfg.d_model, Default::default()),
            n_heads: cfg.n_heads,
            d_head: cfg.d_head(),
            causal: cfg.causal,
            dropout: cfg.dropout_attention,
        }
    }

    /// # Shapes
    /// `x`: (B, T, D); returns (B, T, D).
    pub fn forward(&self, x: &Tensor, mode: ForwardMode) -> Tensor {
        let qkv = x.apply(&self.qkv).chunk(3, -1);
        let [q, k, v] = [0, 1, 2].map(|i| split_heads(&qkv[i], self.n_heads, self.d_head)); // (B, H, T, Dh)
        let out = softmax_attention(&q, &k, &v, None, self.causal, self.dropout, mode); // (B, H, T, Dh)
        merge_heads(&out).apply(&self.out)
    }
}
