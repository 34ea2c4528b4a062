//! Chunked local attention: the sequence is cut into chunks of `chunk_len` tokens and
//! each chunk attends to itself and `n_chunks_before` (and `n_chunks_after`) neighbours,
//! with separate queries and keys.

use tch::{nn, Kind, Tensor};

use super::chunking::{look_around, padding_to_chunks};
use super::kv_cache::KvCache;
use super::qkv::QkvProjection;
use super::softmax::softmax_attention;
use crate::model::activation_checkpoint::checkpoint;
use crate::model::config::ModelConfig;
use crate::model::seeded_random::ForwardMode;
use crate::model::seeded_random::MaskShare;

#[derive(Debug)]
pub struct LocalAttention {
    pub(super) projection: QkvProjection,
    window: Window,
    sliced: bool,
}

impl LocalAttention {
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        Self {
            projection: QkvProjection::new(&vs, cfg),
            window: Window {
                chunk_len: cfg.local.chunk_len,
                n_chunks_before: cfg.local.n_chunks_before,
                n_chunks_after: cfg.local.n_chunks_after,
                causal: cfg.causal,
                dropout: cfg.dropout_attention,
            },
            sliced: cfg.execution.sliced_attention,
        }
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
        let out = self.attend(&q, &k, &v, mode); // (B, H, P, Dh)
        let cache = capacity.map(|capacity| KvCache::new(&k, &v, capacity));
        (self.projection.output(&out), cache)
    }

    /// The layer for one new token of a causal model: it sees its own chunk up to itself
    /// and `n_chunks_before` whole chunks before, as in the full pass.
    ///
    /// # Shapes
    /// `x`: (B, 1, D); returns (B, 1, D).
    pub fn step(&self, x: &Tensor, cache: &mut KvCache, mode: ForwardMode) -> Tensor {
        let [q, k, v] = self.projection.heads(x); // (B, H, 1, Dh)
        let position = cache.len();
        cache.push(&k, &v);
        let Window { chunk_len, n_chunks_before, dropout, .. } = self.window;
        let first_visible = ((position / chunk_len - n_chunks_before) * chunk_len).max(0);
        let (k, v) = cache.since(first_visible); // (B, H, W', Dh)
        let out = softmax_attention(&q, &k, &v, None, false, dropout, mode, None); // (B, H, 1, Dh)
        self.projection.output(&out)
    }

    /// All heads at once, or with `sliced` one head at a time under activation
    /// checkpointing (the same result: a slice's dropout mask is its share of the whole's).
    ///
    /// # Shapes
    /// `q`, `k`, `v`: (B, H, T, Dh); returns (B, H, T, Dh).
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mode: ForwardMode) -> Tensor {
        let n_heads = q.size()[1];
        if !self.sliced {
            return self.window.attend(q, k, v, mode, 0, n_heads);
        }
        let heads: Vec<Tensor> = (0..n_heads)
            .map(|head| {
                let inputs = [q, k, v].map(|x| x.narrow(1, head, 1)); // 3 × (B, 1, T, Dh)
                let window = self.window.clone();
                let attend = move |x: &[Tensor]| vec![window.attend(&x[0], &x[1], &x[2], mode, head, n_heads)];
                checkpoint(&inputs, 1, attend).remove(0)
                // (B, 1, T, Dh)
            })
            .collect();
        Tensor::cat(&heads, 1)
    }
}

/// The shape of local attention's window, and the attention over it.
#[derive(Clone, Debug)]
struct Window {
    chunk_len: i64,
    n_chunks_before: i64,
    n_chunks_after: i64,
    causal: bool,
    dropout: f64,
}

impl Window {
    /// Heads `first_head..first_head + h` of `n_heads`.
    ///
    /// # Shapes
    /// `q`, `k`, `v`: (B, h, T, Dh); returns (B, h, T, Dh).
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mode: ForwardMode, first_head: i64, n_heads: i64) -> Tensor {
        let (b, h, t, dh) = q.size4().unwrap();
        let c = self.chunk_len;
        let t_pad = t + padding_to_chunks(t, c);
        let n_chunks = t_pad / c;
        let chunked = |x: &Tensor| x.constant_pad_nd([0, 0, 0, t_pad - t]).reshape([b * h, n_chunks, c, dh]); // (B*h, NC, C, Dh)
        let (before, after) = (self.n_chunks_before, self.n_chunks_after);
        let q = chunked(q);
        let k = look_around(&chunked(k), 1, before, after, 0.0); // (B*h, NC, W, Dh)
        let v = look_around(&chunked(v), 1, before, after, 0.0); // (B*h, NC, W, Dh)

        let q_pos = Tensor::arange(t_pad, (Kind::Int64, q.device())).view([n_chunks, c]); // (NC, C)
        let k_pos = look_around(&q_pos, 0, before, after, -1.0).unsqueeze(1); // (NC, 1, W)
        let q_pos = q_pos.unsqueeze(-1); // (NC, C, 1)
        let mut visible = k_pos.ge(0).logical_and(&k_pos.lt(t)); // (NC, 1, W)
        if self.causal {
            visible = visible.logical_and(&k_pos.le_tensor(&q_pos)); // (NC, C, W)
        }
        let window = (before + 1 + after) * c;
        let visible = visible.expand([n_chunks, c, window], false);
        // The dropout mask of heads first_head.. is their share of all heads' mask.
        let share = MaskShare {
            view: vec![b, h, n_chunks, c, window],
            whole: vec![b, n_heads, n_chunks, c, window],
            offset: vec![0, first_head, 0, 0, 0],
        };
        let out = softmax_attention(&q, &k, &v, Some(&visible), false, self.dropout, mode, Some(&share)); // (B*h, NC, C, Dh)
        out.view([b, h, t_pad, dh]).narrow(2, 0, t)
    }
}
