//! The projections of attention with separate queries, keys and values (local and full
//! attention): one fused input projection to Q, K, V split into heads, and the output
//! projection back to the model width; and the head split and merge every attention
//! layer uses.

use tch::{nn, Tensor};

use crate::model::config::ModelConfig;
use crate::model::dense::linear;
use crate::model::parameters::linear_parameters;

#[derive(Debug)]
pub struct QkvProjection {
    qkv: nn::Linear,
    out: nn::Linear,
    n_heads: i64,
    d_head: i64,
}

impl QkvProjection {
    /// Variables `vs / "qkv"` and `vs / "out"`.
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> Self {
        let inner = cfg.n_heads * cfg.d_head();
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Self {
            qkv: nn::linear(vs / "qkv", cfg.d_model, 3 * inner, no_bias),
            out: nn::linear(vs / "out", inner, cfg.d_model, output_projection(cfg)),
            n_heads: cfg.n_heads,
            d_head: cfg.d_head(),
        }
    }

    /// The trainable tensors.
    pub fn parameters(&self) -> Vec<Tensor> {
        [&self.qkv, &self.out].into_iter().flat_map(linear_parameters).collect()
    }

    /// # Shapes
    /// `x`: (B, T, D); returns [q, k, v], each (B, H, T, Dh).
    pub fn heads(&self, x: &Tensor) -> [Tensor; 3] {
        let qkv = linear(x, &self.qkv).chunk(3, -1); // 3 × (B, T, H·Dh)
        [0, 1, 2].map(|i| split_heads(&qkv[i], self.n_heads, self.d_head))
    }

    /// # Shapes
    /// `heads`: (B, H, T, Dh); returns (B, T, D).
    pub fn output(&self, heads: &Tensor) -> Tensor {
        linear(&merge_heads(heads), &self.out)
    }
}

/// The attention output projection's settings: with or without its bias.
pub fn output_projection(cfg: &ModelConfig) -> nn::LinearConfig {
    nn::LinearConfig { bias: cfg.compat.attention_output_bias, ..Default::default() }
}

/// # Shapes
/// (B, T, H·Dh) -> (B, H, T, Dh)
pub fn split_heads(x: &Tensor, n_heads: i64, d_head: i64) -> Tensor {
    let (b, t, _) = x.size3().unwrap();
    x.view([b, t, n_heads, d_head]).transpose(1, 2)
}

/// # Shapes
/// (B, H, T, Dh) -> (B, T, H·Dh)
pub fn merge_heads(x: &Tensor) -> Tensor {
    let (b, h, t, dh) = x.size4().unwrap();
    x.transpose(1, 2).contiguous().view([b, t, h * dh])
}
