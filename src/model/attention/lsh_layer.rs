//! The LSH attention layer (paper §2-3): shared query/key and value projections, LSH
//! attention (`lsh`) with this layer's rotations, output projection.

use tch::{nn, Tensor};

use super::hashing::{random_rotations, seeded_rotations};
use super::lsh::{lsh_attend, padded_buckets, LshParams};
use super::qkv::{merge_heads, output_projection, split_heads};
use crate::model::config::ModelConfig;
use crate::model::dense::linear;
use crate::model::parameters::linear_parameters;
use crate::model::seeded_random::ForwardMode;

/// Tag of the rotations' seed under the layer's mode.
const ROTATIONS_TAG: u64 = 1;

/// The LSH attention layer: shared query/key and value projections, LSH attention,
/// output projection.
#[derive(Debug)]
pub struct LshAttention {
    qk: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    n_heads: i64,
    d_head: i64,
    hash_seed: Option<u64>,
    pub params: LshParams,
}

impl LshAttention {
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        let inner = cfg.n_heads * cfg.d_head();
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Self {
            qk: nn::linear(&vs / "qk", cfg.d_model, inner, no_bias),
            v: nn::linear(&vs / "v", cfg.d_model, inner, no_bias),
            out: nn::linear(&vs / "out", inner, cfg.d_model, output_projection(cfg)),
            n_heads: cfg.n_heads,
            d_head: cfg.d_head(),
            hash_seed: cfg.compat.lsh_hash_seed,
            params: LshParams::new(cfg),
        }
    }

    /// The trainable tensors.
    pub fn parameters(&self) -> Vec<Tensor> {
        [&self.qk, &self.v, &self.out].into_iter().flat_map(linear_parameters).collect()
    }

    /// # Shapes
    /// `x`: (B, T, D); returns (B, T, D).
    pub fn forward(&self, x: &Tensor, mode: ForwardMode) -> Tensor {
        let (qk, v) = self.project(x); // (B, H, T, Dh) each
        let out = lsh_attend(&qk, &v, &self.rotations(mode, x.device()), &self.params, mode); // (B, H, T, Dh)
        self.output(&out)
    }

    /// The buckets this layer's forward sorts by, padding positions included (in the
    /// extra last bucket, n_buckets): for comparing the hashing with another
    /// implementation's.
    ///
    /// # Shapes
    /// `x`: (B, T, D); returns (B, H, R, Tp) int64.
    pub fn buckets(&self, x: &Tensor, mode: ForwardMode) -> Tensor {
        let (qk, _) = self.project(x); // (B, H, T, Dh)
        let t = qk.size()[2];
        let t_pad = self.params.padded_len(t);
        let p = self.params.for_padded_len(t_pad);
        let rotations = self.rotations(mode, x.device()).narrow(2, 0, p.n_hashes);
        let qk = qk.constant_pad_nd([0, 0, 0, t_pad - t]); // (B, H, Tp, Dh)
        padded_buckets(&qk, &rotations, &p, t, mode)
    }

    /// The shared query/key and the values, split into heads.
    ///
    /// # Shapes
    /// `x`: (B, T, D); returns two (B, H, T, Dh).
    pub fn project(&self, x: &Tensor) -> (Tensor, Tensor) {
        let qk = split_heads(&linear(x, &self.qk), self.n_heads, self.d_head);
        let v = split_heads(&linear(x, &self.v), self.n_heads, self.d_head);
        (qk, v)
    }

    /// This layer's random rotations for a forward pass in `mode` (the layer's attention
    /// mode): the same for every call with the same mode, whatever the length; with
    /// `lsh.hash_seed`, the same for every call.
    ///
    /// # Shapes
    /// returns (1 or H, Dh, R, S)
    pub fn rotations(&self, mode: ForwardMode, device: tch::Device) -> Tensor {
        let p = &self.params;
        match self.hash_seed {
            Some(seed) => seeded_rotations(seed, self.n_heads, self.d_head, p.n_hashes, &p.hash, device),
            None => random_rotations(mode.child(ROTATIONS_TAG).seed, self.d_head, p.n_hashes, &p.hash, device),
        }
    }

    /// # Shapes
    /// `heads`: (B, H, T, Dh); returns (B, T, D).
    pub fn output(&self, heads: &Tensor) -> Tensor {
        // The rounds are combined in float32 (their log-sum-exps are): back to the
        // weights' dtype for a model held in bfloat16 (autocast casts either way).
        linear(&merge_heads(heads).to_kind(self.out.ws.kind()), &self.out)
    }
}
