//! The duplication task (paper §5): sequences `0 w 0 w` with w drawn uniformly from
//! {1..V-1}^n. A language model can only predict the second copy by finding the first,
//! so second-copy accuracy measures whether attention retrieves far-away tokens.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{Batch, SamplerRng, Split, Task};
use crate::model::ModelConfig;

/// Settings of the synthetic duplication task (paper §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DuplicationConfig {
    /// Symbols, 0 included: w is drawn from 1..n_symbols (default 128, as in the paper).
    pub n_symbols: i64,
    /// Length n of w; the model reads 2n + 1 tokens (default 511, as in the paper).
    pub copy_len: i64,
}

impl Default for DuplicationConfig {
    fn default() -> Self {
        Self { n_symbols: 128, copy_len: 511 }
    }
}

impl DuplicationConfig {
    /// How far back a scored query's partner is: the position whose token it must
    /// predict. The query at input position n + 1 + k (the separator for k = 0, else the
    /// second copy's k-th symbol) has the target w_{k+1}, which the input holds at
    /// position k + 1: n = copy_len back. (The position holding the query's own token,
    /// n + 1 back, is its neighbour before that.)
    pub fn partner_offset(&self) -> i64 {
        self.copy_len
    }
}

/// Seed of the fixed validation sequences (any constant; it names the validation set).
const VALID_SEED: u64 = 0xD0_0B1E;

pub struct Duplication {
    pub cfg: DuplicationConfig,
}

impl Duplication {
    pub fn new(cfg: DuplicationConfig) -> Self {
        Self { cfg }
    }

    /// One sequence `0 w 0 w` of length 2n + 2.
    pub fn sequence(&self, rng: &mut SamplerRng) -> Vec<i64> {
        let n = self.cfg.copy_len as usize;
        let w: Vec<i64> = (0..n).map(|_| 1 + rng.below(self.cfg.n_symbols as u64 - 1) as i64).collect();
        let mut seq = Vec::with_capacity(2 * n + 2);
        seq.push(0);
        seq.extend_from_slice(&w);
        seq.push(0);
        seq.extend_from_slice(&w);
        seq
    }

    /// Weight 1 on the targets that are the second copy of w, 0 elsewhere. Targets are
    /// the sequence shifted by one, so the second copy is targets n+1 ..= 2n.
    pub fn second_copy_weights(&self) -> Vec<f32> {
        let n = self.cfg.copy_len as usize;
        (0..2 * n + 1).map(|j| if j > n { 1.0 } else { 0.0 }).collect()
    }

    fn batch(&self, batch_size: i64, rng: &mut SamplerRng) -> Batch {
        let len = 2 * self.cfg.copy_len + 2;
        let flat: Vec<i64> = (0..batch_size).flat_map(|_| self.sequence(rng)).collect();
        let seqs = Tensor::from_slice(&flat).view([batch_size, len]); // (B, 2n+2)
        let weights = Tensor::from_slice(&self.second_copy_weights()).unsqueeze(0).expand([batch_size, len - 1], false);
        Batch {
            inputs: seqs.narrow(1, 0, len - 1).contiguous(),
            targets: seqs.narrow(1, 1, len - 1).contiguous(),
            weights: weights.to_kind(Kind::Float).contiguous(),
        }
    }
}

impl Task for Duplication {
    fn seq_len(&self) -> i64 {
        2 * self.cfg.copy_len + 1
    }

    fn train_batch(&self, batch_size: i64, rng: &mut SamplerRng) -> Batch {
        self.batch(batch_size, rng)
    }

    fn valid_batches(&self, batch_size: i64, n_batches: i64) -> Vec<Batch> {
        let mut rng = SamplerRng::new(VALID_SEED);
        (0..n_batches).map(|_| self.batch(batch_size, &mut rng)).collect()
    }

    fn reports_bpc(&self) -> bool {
        false
    }

    /// The duplication task has one held-out set: the fixed validation sequences, as many
    /// as fit in `max_bytes` tokens (at least one batch).
    fn split_batches(&self, split: Split, batch_size: i64, max_bytes: usize) -> Result<Vec<Batch>> {
        if split != Split::Valid {
            bail!("the duplication task has only a validation set: use --split valid");
        }
        let per_batch = (batch_size * self.seq_len()) as usize;
        Ok(self.valid_batches(batch_size, (max_bytes / per_batch).max(1) as i64))
    }

    fn scoring_split(&self) -> Split {
        Split::Valid
    }

    fn check_model(&self, model: &ModelConfig) -> Result<()> {
        if model.vocab_size - model.compat.token_offset < self.cfg.n_symbols {
            bail!(
                "the duplication task uses {} symbols but the model has {} (vocab_size - compat.token_offset): raise model.vocab_size",
                self.cfg.n_symbols,
                model.vocab_size - model.compat.token_offset
            );
        }
        if self.seq_len() > model.max_seq_len {
            bail!(
                "duplication sequences are {} tokens (2·copy_len + 1) but model.max_seq_len is {}: lower train.duplication.copy_len or raise max_seq_len",
                self.seq_len(),
                model.max_seq_len
            );
        }
        Ok(())
    }
}
