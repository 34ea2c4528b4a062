//! The position-wise feed-forward, optionally applied `ff_chunk_len` positions at a time
//! (paper §4, "Chunking") so that no (T, d_ff) activation exists for the whole sequence.

use tch::{nn, Tensor};

use super::config::{Activation, ModelConfig};
use super::parameters::linear_parameters;
use super::seeded_random::ForwardMode;
use crate::model::dense::linear;

#[derive(Debug)]
pub struct FeedForward {
    up: nn::Linear,
    down: nn::Linear,
    activation: Activation,
    chunk_len: Option<i64>,
    dropout: f64,
}

impl FeedForward {
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        Self {
            up: nn::linear(&vs / "up", cfg.d_model, cfg.d_ff, Default::default()),
            down: nn::linear(&vs / "down", cfg.d_ff, cfg.d_model, Default::default()),
            activation: cfg.compat.activation,
            chunk_len: cfg.execution.ff_chunk_len,
            dropout: cfg.dropout_ff,
        }
    }

    /// The trainable tensors.
    pub fn parameters(&self) -> Vec<Tensor> {
        [&self.up, &self.down].into_iter().flat_map(linear_parameters).collect()
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
                    .map(|(i, chunk)| self.forward_rows(chunk, mode, i as i64 * chunk_len, t))
                    .collect();
                Tensor::cat(&chunks, 1)
            }
            _ => self.forward_rows(x, mode, 0, t),
        }
    }

    /// The rows `start..start + L` of `forward` over a `total_len`-position sequence,
    /// given only those rows: exact, as the feed-forward is position-wise and its dropout
    /// mask is those rows' share of the whole sequence's (so chunking changes nothing).
    ///
    /// # Shapes
    /// `rows`: (B, L, D); returns (B, L, D).
    pub fn forward_rows(&self, rows: &Tensor, mode: ForwardMode, start: i64, total_len: i64) -> Tensor {
        let hidden = linear(rows, &self.up); // (B, L, d_ff)
        let hidden = match self.activation {
            Activation::Gelu => hidden.gelu("none"),
            Activation::Relu => hidden.relu(),
        };
        let hidden = mode.child(0).dropout_rows(&hidden, self.dropout, start, total_len);
        linear(&hidden, &self.down)
    }

    /// Positions per chunk when the feed-forward over `len` positions is chunked.
    pub fn chunk_len_for(&self, len: i64) -> Option<i64> {
        self.chunk_len.filter(|&chunk_len| chunk_len < len)
    }
}
