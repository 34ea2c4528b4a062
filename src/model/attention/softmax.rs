//! Plain softmax attention over given queries, keys and values, shared by local and full
//! attention: libtorch's fused `scaled_dot_product_attention` when no dropout is drawn,
//! an explicit softmax with a seeded dropout mask otherwise (so that the reversible
//! backward can replay it).

use tch::{Kind, Tensor};

use crate::model::seeded_random::{self, ForwardMode, MaskShare};

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
        Some(share) => seeded_random::dropout_share(&probs, dropout, mode.seed, mode.train, share),
        None => seeded_random::dropout(&probs, dropout, mode.seed, mode.train),
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
