//! Incremental decoding: the prompt runs through the model once, leaving in every layer
//! the keys and values (and for LSH layers the per-bucket lists) that later tokens
//! attend to; each new token then costs its own projections and feed-forward plus
//! attention over at most n_hashes × chunk_len keys (LSH), the local window (local),
//! or the past (full). No token re-runs the sequence.
//!
//! Full and local layers give what the full forward pass gives. LSH layers follow the
//! strict causal rule (see `lsh_decoding`), which is the trained model for models
//! trained with `lsh.strict_causal` and an approximation of the paper's rule otherwise.

use anyhow::{bail, Result};
use tch::Tensor;

use super::attention::kv_cache::KvCache;
use super::attention::lsh_decoding::LshCache;
use super::attention::Attention;
use super::config::ModelConfig;
use super::lm::ReformerLm;
use super::seeded_random::ForwardMode;

/// One layer's decoding state.
#[derive(Debug)]
enum LayerCache {
    Lsh(LshCache),
    Local(KvCache),
    Full(KvCache),
}

/// A model decoding a batch of sequences one token at a time.
pub struct Decoder<'a> {
    model: &'a ReformerLm,
    layers: Vec<LayerCache>,
    mode: ForwardMode,
    len: i64,
}

/// Why `cfg` cannot decode incrementally, if it cannot.
pub fn check_decodable(cfg: &ModelConfig) -> Result<()> {
    if !cfg.causal {
        bail!("incremental decoding needs a causal model (this one has causal = false)");
    }
    let has_lsh = cfg.n_lsh_layers() > 0;
    if has_lsh && cfg.lsh.n_chunks_before < 1 {
        bail!("incremental decoding of LSH layers needs lsh.n_chunks_before >= 1: use --no-cache");
    }
    Ok(())
}

impl<'a> Decoder<'a> {
    /// Runs `tokens` through the model, filling every layer's cache with room for the
    /// model's `max_seq_len` positions. `mode` must be the evaluation mode the full
    /// forward pass would use (it fixes the LSH rotations). Returns the decoder and the
    /// logits after the last prompt token.
    ///
    /// # Shapes
    /// `tokens`: (B, P) int64, 1 ≤ P ≤ max_seq_len; returns logits (B, V − token_offset).
    pub fn prefill(model: &'a ReformerLm, tokens: &Tensor, mode: ForwardMode) -> Result<(Self, Tensor)> {
        check_decodable(&model.cfg)?;
        let (_, len) = tokens.size2()?;
        let capacity = model.cfg.max_seq_len;
        if len < 1 || len > capacity {
            bail!("a prompt of {len} tokens cannot start decoding: 1..={capacity} tokens fit this model");
        }
        tch::no_grad(|| {
            let x = model.embed(tokens, mode); // (B, P, D)
            let mut streams = (x.shallow_clone(), x);
            let mut layers = Vec::with_capacity(model.blocks.len());
            for (i, block) in model.blocks.iter().enumerate() {
                let mut layer = None;
                streams = block.forward_with(&streams.0, &streams.1, mode.child(i as u64), |attention, x, mode| {
                    let (out, cache) = prefill_attention(attention, x, mode, capacity);
                    layer = Some(cache);
                    out
                });
                layers.push(layer.expect("the block ran its attention"));
            }
            let last = |stream: &Tensor| stream.narrow(1, len - 1, 1); // (B, 1, D)
            let logits = model.logits(&model.join_streams(&last(&streams.0), &last(&streams.1))).squeeze_dim(1); // (B, V − token_offset)
            Ok((Self { model, layers, mode, len }, logits))
        })
    }

    /// Positions decoded so far, prompt included.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no further token fits (the caller starts over from a shorter prompt).
    pub fn is_full(&self) -> bool {
        self.len >= self.model.cfg.max_seq_len
    }

    /// Feeds one token per sequence at position `len()`.
    ///
    /// # Shapes
    /// `tokens`: (B, 1) int64; returns logits (B, V − token_offset).
    pub fn step(&mut self, tokens: &Tensor) -> Tensor {
        assert!(!self.is_full(), "the decoding cache is full: start over with a shorter prompt");
        let (model, mode) = (self.model, self.mode);
        tch::no_grad(|| {
            let x = model.embed_at(tokens, self.len, mode); // (B, 1, D)
            let mut streams = (x.shallow_clone(), x);
            for (i, (block, layer)) in model.blocks.iter().zip(&mut self.layers).enumerate() {
                streams = block.forward_with(&streams.0, &streams.1, mode.child(i as u64), |attention, x, mode| {
                    step_attention(attention, x, layer, mode)
                });
            }
            self.len += 1;
            model.logits(&model.join_streams(&streams.0, &streams.1)).squeeze_dim(1)
            // (B, V − token_offset)
        })
    }
}

/// # Shapes
/// `x`: (B, P, D); returns (B, P, D).
fn prefill_attention(attention: &Attention, x: &Tensor, mode: ForwardMode, capacity: i64) -> (Tensor, LayerCache) {
    match attention {
        Attention::Lsh(a) => {
            let (out, cache) = a.prefill(x, mode, capacity);
            (out, LayerCache::Lsh(cache))
        }
        Attention::Local(a) => {
            let (out, cache) = a.prefill(x, mode, Some(capacity));
            (out, LayerCache::Local(cache.expect("a cache was asked for")))
        }
        Attention::Full(a) => {
            let (out, cache) = a.prefill(x, mode, Some(capacity));
            (out, LayerCache::Full(cache.expect("a cache was asked for")))
        }
    }
}

/// # Shapes
/// `x`: (B, 1, D); returns (B, 1, D).
fn step_attention(attention: &Attention, x: &Tensor, layer: &mut LayerCache, mode: ForwardMode) -> Tensor {
    match (attention, layer) {
        (Attention::Lsh(a), LayerCache::Lsh(cache)) => a.step(x, cache),
        (Attention::Local(a), LayerCache::Local(cache)) => a.step(x, cache, mode),
        (Attention::Full(a), LayerCache::Full(cache)) => a.step(x, cache, mode),
        _ => unreachable!("each layer's cache is built by its own attention in prefill"),
    }
}
