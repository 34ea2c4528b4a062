//! Plain softmax attention over given queries, keys and values, shared by local and full
//! attention: libtorch's fused `scaled_dot_product_attention` when no dropout is drawn,
//! an explicit softmax with a seeded dropout mask otherwise (so that the reversible
//! backward can replay it). And the softmax over an LSH window with its log-sum-exp
//! (`softmax_and_logsumexp`, `WindowSoftmax`).

use tch::{Kind, Tensor};

use crate::model::seeded_random::{ForwardMode, MaskShare};

/// Softmax attention with an optional mask of visible keys, or causal (query i sees
/// keys 0..=i, for L = S) without a materialised mask, so that SDPA's fused kernel keeps
/// memory linear in the length.
///
/// # Shapes
/// `q`: (N, M, L, Dh); `k`, `v`: (N, M, S, Dh); `visible`: broadcastable to (N, M, L, S),
/// true where a query may see a key; returns (N, M, L, Dh). With `share`, the dropout
/// mask over the (N, M, L, S) probabilities is their share of a larger one's.
#[allow(clippy::too_many_arguments)]
pub fn softmax_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    visible: Option<&Tensor>,
    causal: bool,
    dropout: f64,
    mode: ForwardMode,
    share: Option<&MaskShare>,
) -> Tensor {
    if mode.train && dropout > 0.0 {
        let causal_mask = causal.then(|| causal_visibility(q.size()[2], q.device())); // (L, L)
        let visible = match (visible, &causal_mask) {
            (Some(v), Some(c)) => Some(v.logical_and(c)),
            (Some(v), None) => Some(v.shallow_clone()),
            (None, c) => c.as_ref().map(Tensor::shallow_clone),
        };
        return explicit_attention(q, k, v, visible.as_ref(), dropout, mode, share);
    }
    Tensor::scaled_dot_product_attention(q, k, v, visible, 0.0, causal, None, false)
}

/// The same attention, written out: logits, mask, softmax, seeded dropout.
pub fn explicit_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    visible: Option<&Tensor>,
    dropout: f64,
    mode: ForwardMode,
    share: Option<&MaskShare>,
) -> Tensor {
    let d_head = q.size()[3] as f64;
    let logits = q.matmul(&k.transpose(-1, -2)) / d_head.sqrt(); // (N, M, L, S)
    let logits = match visible {
        Some(visible) => logits.masked_fill(&visible.logical_not(), f64::NEG_INFINITY),
        None => logits,
    };
    let probs = logits.softmax(-1, Kind::Float).to_kind(q.kind());
    let probs = match share {
        Some(share) => mode.dropout_share(&probs, dropout, share),
        None => mode.dropout(&probs, dropout),
    };
    probs.matmul(v)
}

/// Lower-triangular visibility: query i sees keys 0..=i.
///
/// # Shapes
/// returns (L, L) bool
pub fn causal_visibility(len: i64, device: tch::Device) -> Tensor {
    Tensor::ones([len, len], (Kind::Bool, device)).tril(0)
}

/// Softmax over the last dimension and its log-sum-exp, computed from the softmax:
/// lse = max logit − log(max probability), exact because the largest logit has the
/// largest probability (≥ 1/W, so the log is safe). libtorch's softmax kernel is several
/// times faster on CPU than an `exp` over logits that are mostly `MASKED_LOGIT`, and
/// autograd through this form gives the usual d lse / d logits = softmax.
///
/// # Shapes
/// `logits`: (..., W); returns (..., W) and (..., 1).
pub fn softmax_and_logsumexp(logits: &Tensor) -> (Tensor, Tensor) {
    let softmax = WindowSoftmax::new(logits);
    let lse = softmax.logsumexp();
    (softmax.probs, lse)
}

/// A softmax with the largest logit and the largest probability of each row, from which
/// the row's log-sum-exp follows (see `softmax_and_logsumexp`).
pub struct WindowSoftmax {
    /// (..., W)
    pub probs: Tensor,
    /// (..., 1)
    pub max_logit: Tensor,
    /// (..., 1)
    pub max_prob: Tensor,
}

impl WindowSoftmax {
    /// # Shapes
    /// `logits`: (..., W).
    pub fn new(logits: &Tensor) -> Self {
        let probs = logits.softmax(-1, logits.kind());
        let max_logit = logits.amax([-1], true);
        let max_prob = probs.amax([-1], true);
        Self { probs, max_logit, max_prob }
    }

    /// lse = max logit − log(max probability).
    ///
    /// # Shapes
    /// returns (..., 1)
    pub fn logsumexp(&self) -> Tensor {
        &self.max_logit - self.max_prob.log()
    }
}
