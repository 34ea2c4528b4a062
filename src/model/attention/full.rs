//! Full (dense) multi-head attention over the whole sequence: the baseline that LSH
//! attention is measured against.

use tch::{nn, Tensor};

use super::kv_cache::KvCache;
use super::qkv::QkvProjection;
use super::softmax::softmax_attention;
use crate::model::config::ModelConfig;
use crate::model::seeded_random::ForwardMode;

#[derive(Debug)]
pub struct FullAttention {
    pub(super) projection: QkvProjection,
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
        self.prefill(x, mode, None).0
    }

    /// The layer over a whole prompt, and when `capacity` is given a decoding cache of
    /// its keys and values with room for that many positions.
    ///
    /// # Shapes
    /// `x`: (B, P, D); returns (B, P, D).
    pub fn prefill(&self, x: &Tensor, mode: ForwardMode, capacity: Option<i64>) -> (Tensor, Option<KvCache>) {
        let [q, k, v] = self.projection.heads(x); // (B, H, P, Dh)
        let out = softmax_attention(&q, &k, &v, None, self.causal, self.dropout, mode, None); // (B, H, P, Dh)
        let cache = capacity.map(|capacity| KvCache::new(&k, &v, capacity));
        (self.projection.output(&out), cache)
    }

    /// The layer for one new token, which sees every cached position and itself.
    ///
    /// # Shapes
    /// `x`: (B, 1, D); returns (B, 1, D).
    pub fn step(&self, x: &Tensor, cache: &mut KvCache, mode: ForwardMode) -> Tensor {
        let [q, k, v] = self.projection.heads(x); // (B, H, 1, Dh)
        cache.push(&k, &v);
        let (k, v) = cache.since(0); // (B, H, T, Dh)
        let out = softmax_attention(&q, &k, &v, None, false, self.dropout, mode, None); // (B, H, 1, Dh)
        self.projection.output(&out)
    }
}
