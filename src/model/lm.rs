//! The Reformer language model: byte embedding + positions, a stack of two-stream
//! blocks, the two streams joined, LayerNorm, logits; and a loss computed
//! `loss_chunk_len` positions at a time.

use std::sync::Arc;

use tch::{nn, Kind, TchError, Tensor};

use super::attention::lsh::LshParams;
use super::attention::window_rule::WindowRule;
use super::attention::Attention;
use super::block::Block;
use super::config::ModelConfig;
use super::positional::PositionalEmbedding;
use super::reversible;
use super::seeded_random::ForwardMode;
use crate::autograd;
use crate::model::dense::linear;

const EMBEDDING_DROPOUT_TAG: u64 = u64::MAX;

/// The loss of one batch.
pub struct LossStats {
    /// Mean negative log-likelihood (nats) over the weighted targets; differentiable.
    pub loss: Tensor,
    /// Weighted count of targets the model ranks first.
    pub correct: f64,
    /// Sum of target weights (the number of targets scored).
    pub weight: f64,
}

#[derive(Debug)]
pub struct ReformerLm {
    pub cfg: ModelConfig,
    embedding: nn::Embedding,
    positional: PositionalEmbedding,
    /// Shared with the autograd graph of a reversible forward until it is freed (see
    /// `reversible_blocks`): the setters below fail while it is.
    pub blocks: Arc<[Block]>,
    final_norm: nn::LayerNorm,
    head: nn::Linear,
}

impl ReformerLm {
    /// Builds the model under `vs`; `cfg` must have passed `validate()`.
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        let blocks: Arc<[Block]> =
            (0..cfg.n_layers).map(|i| Block::new(&vs / "layers" / i, cfg, cfg.attention_of_layer(i))).collect();
        Self {
            cfg: cfg.clone(),
            embedding: nn::embedding(&vs / "embedding", cfg.vocab_size, cfg.d_model, Default::default()),
            positional: PositionalEmbedding::new(&vs / "positional", cfg),
            blocks,
            final_norm: nn::layer_norm(
                &vs / "final_norm",
                vec![2 * cfg.d_model],
                nn::LayerNormConfig { eps: cfg.compat.layer_norm_eps, ..Default::default() },
            ),
            head: nn::linear(&vs / "head", 2 * cfg.d_model, cfg.vocab_size, Default::default()),
        }
    }

    /// Evaluates LSH layers with `n_hashes` rounds instead of the trained number (paper
    /// Table 2); other layers are unchanged.
    pub fn set_n_hashes(&mut self, n_hashes: i64) -> Result<(), TchError> {
        self.update_lsh(|params| params.n_hashes = n_hashes)
    }

    /// Switches LSH layers to window rule `rule` (`lsh.window`).
    pub fn set_window_rule(&mut self, rule: WindowRule) -> Result<(), TchError> {
        self.update_lsh(|params| params.rule = rule)
    }

    /// Evaluates LSH layers as dense attention with their shared query/key and self-mask:
    /// one round and one chunk covering `seq_len` tokens (LSH's exact special case).
    pub fn use_dense_lsh(&mut self, seq_len: i64) -> Result<(), TchError> {
        self.update_lsh(|params| *params = params.dense(seq_len))
    }

    /// Changes the settings of every LSH layer; fails while the graph of a reversible
    /// forward still holds the blocks (its backward would replay the changed layers).
    fn update_lsh(&mut self, change: impl Fn(&mut LshParams)) -> Result<(), TchError> {
        let blocks = Arc::get_mut(&mut self.blocks).ok_or_else(|| {
            TchError::Torch(
                "the blocks are held by the graph of a reversible forward: run its backward or drop it first".into(),
            )
        })?;
        for block in blocks {
            if let Attention::Lsh(lsh) = &mut block.attention {
                change(&mut lsh.params);
            }
        }
        Ok(())
    }

    /// The embedded input, duplicated into the two residual streams' start.
    ///
    /// # Shapes
    /// `tokens`: (B, T) int64; returns (B, T, D).
    pub fn embed(&self, tokens: &Tensor, mode: ForwardMode) -> Tensor {
        self.embed_at(tokens, 0, mode)
    }

    /// The embedded input of tokens at positions `start..start + T`.
    ///
    /// # Shapes
    /// `tokens`: (B, T) int64; returns (B, T, D).
    pub fn embed_at(&self, tokens: &Tensor, start: i64, mode: ForwardMode) -> Tensor {
        let t = tokens.size()[1];
        let x = (tokens + self.cfg.compat.token_offset).apply(&self.embedding); // (B, T, D)
        let x = match self.positional.range(start, t) {
            Some(positions) => x + positions, // (T, D) broadcast over B
            None => x,
        };
        mode.child(EMBEDDING_DROPOUT_TAG).dropout(&x, self.cfg.dropout_hidden)
    }

    /// The blocks. When `cfg.reversible` is set and autograd is recording, they run as
    /// one reversible node that keeps no block's activations (see `reversible`);
    /// otherwise under ordinary autograd, which keeps every block's activations.
    ///
    /// # Shapes
    /// `x`: (B, T, D); returns (y1, y2), each (B, T, D).
    pub fn run_blocks(&self, x: &Tensor, mode: ForwardMode) -> (Tensor, Tensor) {
        if self.cfg.execution.reversible && autograd::grad_enabled() {
            return reversible::reversible_blocks(&self.blocks, x, x, mode);
        }
        let mut streams = (x.shallow_clone(), x.shallow_clone());
        for (i, block) in self.blocks.iter().enumerate() {
            streams = block.forward(&streams.0, &streams.1, mode.child(i as u64));
        }
        streams
    }

    /// The normalised, joined streams that the output layer reads.
    ///
    /// # Shapes
    /// `tokens`: (B, T); returns (B, T, 2D).
    pub fn hidden(&self, tokens: &Tensor, mode: ForwardMode) -> Tensor {
        let (y1, y2) = self.run_blocks(&self.embed(tokens, mode), mode);
        self.join_streams(&y1, &y2)
    }

    /// The two streams the last block leaves, joined and normalised.
    ///
    /// # Shapes
    /// `y1`, `y2`: (B, T, D); returns (B, T, 2D).
    pub fn join_streams(&self, y1: &Tensor, y2: &Tensor) -> Tensor {
        Tensor::cat(&[y1, y2], -1).apply(&self.final_norm)
    }

    /// The logits of the tokens the model can input and emit: ids token_offset.. of the
    /// vocabulary, as token 0.. (bytes for a byte model).
    ///
    /// # Shapes
    /// `hidden`: (B, T, 2D); returns (B, T, V - token_offset).
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let offset = self.cfg.compat.token_offset;
        self.vocab_logits(hidden).narrow(-1, offset, self.cfg.vocab_size - offset)
    }

    /// The logits of the whole vocabulary, reserved ids included.
    ///
    /// # Shapes
    /// `hidden`: (B, T, 2D); returns (B, T, V).
    pub fn vocab_logits(&self, hidden: &Tensor) -> Tensor {
        linear(hidden, &self.head)
    }

    /// # Shapes
    /// `tokens`: (B, T); returns (B, T, V - token_offset).
    pub fn forward(&self, tokens: &Tensor, mode: ForwardMode) -> Tensor {
        self.logits(&self.hidden(tokens, mode))
    }

    /// Mean cross-entropy of `targets` given `tokens`, each target weighted (a weight of
    /// 0 leaves a position out), computed `loss_chunk_len` positions at a time so that no
    /// (B, T, V) logits tensor exists for the whole sequence. The softmax runs over the
    /// whole vocabulary, reserved ids included (as the released models were trained).
    ///
    /// # Shapes
    /// `tokens`, `targets`: (B, T) int64; `weights`: (B, T) float or None (all ones).
    pub fn loss(&self, tokens: &Tensor, targets: &Tensor, weights: Option<&Tensor>, mode: ForwardMode) -> LossStats {
        let hidden = self.hidden(tokens, mode); // (B, T, 2D)
        let ones;
        let weights = match weights {
            Some(w) => w,
            None => {
                ones = Tensor::ones(targets.size(), (Kind::Float, targets.device()));
                &ones
            }
        };
        let t = targets.size()[1];
        let chunk_len = self.cfg.execution.loss_chunk(t);
        let mut nll_sum = Tensor::zeros([], (Kind::Float, targets.device()));
        let mut correct = Tensor::zeros([], (Kind::Float, targets.device()));
        for start in (0..t).step_by(chunk_len as usize) {
            let len = chunk_len.min(t - start);
            let logits = self.vocab_logits(&hidden.narrow(1, start, len)); // (B, C, V)
            let target = targets.narrow(1, start, len) + self.cfg.compat.token_offset; // (B, C) vocabulary ids
            let weight = weights.narrow(1, start, len); // (B, C)
            let log_probs = logits.log_softmax(-1, Kind::Float); // (B, C, V)
            let nll = -log_probs.gather(-1, &target.unsqueeze(-1), false).squeeze_dim(-1); // (B, C)
            nll_sum += (nll * &weight).sum(Kind::Float);
            let hits = tch::no_grad(|| logits.argmax(-1, false).eq_tensor(&target).to_kind(Kind::Float) * &weight);
            correct += hits.sum(Kind::Float);
        }
        let weight = weights.sum(Kind::Float).double_value(&[]);
        LossStats { loss: nll_sum / weight.max(1.0), correct: correct.double_value(&[]), weight }
    }
}
