//! The position-wise feed-forward, optionally applied `ff_chunk_len` positions at a time
//! (paper §4, "Chunking") so that no (T, d_ff) activation exists for the whole sequence.

use tch::{nn, Tensor};

use super::config::ModelConfig;
use super::seeded_random::{self, ForwardMode};

#[derive(Debug)]
pub struct FeedForward {
    up: nn::Linear,
    down: nn::Linear,
    chunk_len: Option<i64>,
    dropout: f64,
}

impl FeedForward {
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        Self {
            up: nn::linear(&vs / "up", cfg.d_model, cfg.d_ff, Default::default()),
            down: nn::linear(&vs / "down", cfg.d_ff, cfg.d_model, Default::default()),
            chunk_len: cfg.ff_chunk_len,
            dropout: cfg.dropout_ff,
        }
    }

    /// # Shapes
    /// `x`: (B, T, D); returns (B, T, D).
    pub fn forward(&self, x: &Tensor, mode: ForwardMode) -> Tensor {
        let t = x.size()[1];
        match self.chunk_len {
            Some(chunk_len) if chunk_len < t => {
                let chunks: Vec<Tensor> = x
                    .split(chunk_len, 1)
                    .iter()
                    .enumerate()
                    .map(|(i, chunk)| self.forward_chunk(chunk, mode.child(i as u64)))
                    .collect();
                Tensor::cat(&chunks, 1)
            }
            _ => self.forward_chunk(x, mode.child(0)),
        }
    }

    /// # Shapes
    /// `x`: (B, C, D); returns (B, C, D).
    fn forward_chunk(&self, x: &Tensor, mode: ForwardMode) -> Tensor {
        let hidden = x.apply(&self.up).gelu("none"); // (B, C, d_ff)
        seeded_random::dropout(&hidden, self.dropout, mode.seed, mode.train).apply(&self.down)
    }
}
