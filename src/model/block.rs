//! One two-stream residual block (paper §3): y1 = x1 + F(x2), y2 = x2 + G(y1), with
//! F = attention and G = feed-forward, each behind its own pre-LayerNorm. The same F and
//! G run under ordinary autograd and inside the reversible backward.

use tch::{nn, Tensor};

use super::attention::lsh::LshParams;
use super::attention::Attention;
use super::config::{AttentionKind, ModelConfig};
use super::feed_forward::FeedForward;
use super::parameters::layer_norm_parameters;
use super::seeded_random::ForwardMode;

const ATTENTION_TAG: u64 = 1;
const ATTENTION_DROPOUT_TAG: u64 = 2;
const FEED_FORWARD_TAG: u64 = 3;
const FEED_FORWARD_DROPOUT_TAG: u64 = 4;

#[derive(Debug)]
pub struct Block {
    attention_norm: nn::LayerNorm,
    pub attention: Attention,
    ff_norm: nn::LayerNorm,
    ff: FeedForward,
    dropout_hidden: f64,
    /// Every trainable tensor above, listed once at construction.
    parameters: Vec<Tensor>,
}

impl Block {
    pub fn new(vs: nn::Path, cfg: &ModelConfig, kind: AttentionKind) -> Self {
        let norm = nn::LayerNormConfig { eps: cfg.compat.layer_norm_eps, ..Default::default() };
        let attention_norm = nn::layer_norm(&vs / "attn_norm", vec![cfg.d_model], norm);
        let attention = Attention::new(&vs / "attn", cfg, kind);
        let ff_norm = nn::layer_norm(&vs / "ff_norm", vec![cfg.d_model], norm);
        let ff = FeedForward::new(&vs / "ff", cfg);
        let parameters = [
            layer_norm_parameters(&attention_norm),
            attention.parameters(),
            layer_norm_parameters(&ff_norm),
            ff.parameters(),
        ]
        .into_iter()
        .flatten()
        .collect();
        Self { attention_norm, attention, ff_norm, ff, dropout_hidden: cfg.dropout_hidden, parameters }
    }

    /// The trainable tensors F and G read, in a fixed order (the reversible stack hands
    /// them to its autograd node, which returns their gradients).
    pub fn parameters(&self) -> &[Tensor] {
        &self.parameters
    }

    /// What F's attention reads: `x2` after F's LayerNorm.
    ///
    /// # Shapes
    /// `x2`: (B, T, D); returns (B, T, D).
    pub fn attention_input(&self, x2: &Tensor) -> Tensor {
        x2.apply(&self.attention_norm)
    }

    /// The buckets that F's LSH attention sorts by in a forward in `mode` (this block's
    /// own), padding included (see `LshAttention::buckets`), with the layer's settings;
    /// None when F is not LSH attention.
    ///
    /// # Shapes
    /// `x2`: (B, T, D); returns (B, H, R, Tp) int64.
    pub fn lsh_buckets(&self, x2: &Tensor, mode: ForwardMode) -> Option<(Tensor, &LshParams)> {
        match &self.attention {
            Attention::Lsh(lsh) => {
                Some((lsh.buckets(&self.attention_input(x2), mode.child(ATTENTION_TAG)), &lsh.params))
            }
            _ => None,
        }
    }

    /// F, the attention branch. `mode` is this block's own (see `Block::forward`).
    ///
    /// # Shapes
    /// `x2`: (B, T, D); returns (B, T, D).
    pub fn f(&self, x2: &Tensor, mode: ForwardMode) -> Tensor {
        self.f_with(x2, mode, |attention, x, mode| attention.forward(x, mode))
    }

    /// F with the attention call supplied by the caller (incremental decoding passes its
    /// cached attention): `attend(attention, normalised input, attention's mode)`.
    fn f_with(
        &self,
        x2: &Tensor,
        mode: ForwardMode,
        attend: impl FnOnce(&Attention, &Tensor, ForwardMode) -> Tensor,
    ) -> Tensor {
        let out = attend(&self.attention, &x2.apply(&self.attention_norm), mode.child(ATTENTION_TAG));
        mode.child(ATTENTION_DROPOUT_TAG).dropout(&out, self.dropout_hidden)
    }

    /// G, the feed-forward branch.
    ///
    /// # Shapes
    /// `y1`: (B, T, D); returns (B, T, D).
    pub fn g(&self, y1: &Tensor, mode: ForwardMode) -> Tensor {
        let out = self.ff.forward(&y1.apply(&self.ff_norm), mode.child(FEED_FORWARD_TAG));
        mode.child(FEED_FORWARD_DROPOUT_TAG).dropout(&out, self.dropout_hidden)
    }

    /// Rows `start..start + L` of G over a `total_len`-token sequence, given only those
    /// rows; exact because G is position-wise (its dropout masks are the whole pass's).
    /// The rows must form one chunk of `g_chunk_len(total_len)`, or be the whole sequence
    /// when that is None.
    ///
    /// # Shapes
    /// `y1_rows`: (B, L, D); returns (B, L, D).
    pub fn g_rows(&self, y1_rows: &Tensor, mode: ForwardMode, start: i64, total_len: i64) -> Tensor {
        let out = self.ff.forward_rows(&y1_rows.apply(&self.ff_norm), mode.child(FEED_FORWARD_TAG), start, total_len);
        mode.child(FEED_FORWARD_DROPOUT_TAG).dropout_rows(&out, self.dropout_hidden, start, total_len)
    }

    /// Positions per feed-forward chunk over `len` positions, when chunked.
    pub fn g_chunk_len(&self, len: i64) -> Option<i64> {
        self.ff.chunk_len_for(len)
    }

    /// y1 = x1 + F(x2), y2 = x2 + G(y1).
    ///
    /// # Shapes
    /// `x1`, `x2`: (B, T, D); returns (y1, y2), each (B, T, D).
    pub fn forward(&self, x1: &Tensor, x2: &Tensor, mode: ForwardMode) -> (Tensor, Tensor) {
        self.forward_with(x1, x2, mode, |attention, x, mode| attention.forward(x, mode))
    }

    /// The block with F's attention call supplied by the caller (see `f_with`).
    ///
    /// # Shapes
    /// `x1`, `x2`: (B, T, D); returns (y1, y2), each (B, T, D).
    pub fn forward_with(
        &self,
        x1: &Tensor,
        x2: &Tensor,
        mode: ForwardMode,
        attend: impl FnOnce(&Attention, &Tensor, ForwardMode) -> Tensor,
    ) -> (Tensor, Tensor) {
        let y1 = x1 + self.f_with(x2, mode, attend);
        let y2 = x2 + self.g(&y1, mode);
        (y1, y2)
    }
}
