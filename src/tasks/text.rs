//! Byte-level text (enwik8 or any file): train/validation/test splits in file order,
//! random training windows, fixed validation windows, non-overlapping test windows.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::{Batch, SamplerRng, Split, Task};
use crate::model::ModelConfig;

/// enwik8's standard split: 90M / 5M / 5M bytes of the 100M.
pub const ENWIK8_BYTES: usize = 100_000_000;
const ENWIK8_TRAIN_BYTES: usize = 90_000_000;
const ENWIK8_VALID_BYTES: usize = 5_000_000;
/// Seed of the fixed validation windows (any constant; it names the validation set).
const VALID_SEED: u64 = 0x7E57;

pub struct TextData {
    pub train: Vec<u8>,
    pub valid: Vec<u8>,
    pub test: Vec<u8>,
    seq_len: i64,
}

/// Byte offsets where the validation and test splits start: enwik8's 90M/5M/5M for the
/// full file, the same proportions for any other.
pub fn split_points(len: usize) -> (usize, usize) {
    if len == ENWIK8_BYTES {
        return (ENWIK8_TRAIN_BYTES, ENWIK8_TRAIN_BYTES + ENWIK8_VALID_BYTES);
    }
    let valid_start = len * 90 / 100;
    let test_start = len * 95 / 100;
    (valid_start, test_start)
}

impl TextData {
    /// Reads `path` and splits it. Training needs each split to hold a window
    /// (`check_trainable`); scoring needs only the split it scores.
    pub fn load(path: &Path, seq_len: i64) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read data file {}", path.display()))?;
        Ok(Self::from_bytes(bytes, seq_len))
    }

    pub fn from_bytes(mut bytes: Vec<u8>, seq_len: i64) -> Self {
        let (valid_start, test_start) = split_points(bytes.len());
        let test = bytes.split_off(test_start);
        let valid = bytes.split_off(valid_start);
        Self { train: bytes, valid, test, seq_len }
    }

    /// Windows starting at `starts`, cut into inputs and next-byte targets.
    fn windows(&self, split: &[u8], starts: &[usize]) -> Batch {
        let window = self.seq_len as usize + 1;
        let flat: Vec<i64> = starts.iter().flat_map(|&s| split[s..s + window].iter().map(|&b| b as i64)).collect();
        let seqs = Tensor::from_slice(&flat).view([starts.len() as i64, window as i64]); // (B, T+1)
        Batch {
            inputs: seqs.narrow(1, 0, self.seq_len).contiguous(),
            targets: seqs.narrow(1, 1, self.seq_len).contiguous(),
            weights: Tensor::ones([starts.len() as i64, self.seq_len], (Kind::Float, tch::Device::Cpu)),
        }
    }

    /// `bytes` in non-overlapping windows (each target scored once), at most `max_bytes`
    /// of it, in batches.
    fn windows_over(&self, bytes: &[u8], batch_size: i64, max_bytes: usize) -> Vec<Batch> {
        let window = self.seq_len as usize;
        let usable = bytes.len().saturating_sub(1).min(max_bytes.max(window));
        let starts: Vec<usize> = (0..usable / window).map(|i| i * window).collect();
        starts.chunks(batch_size as usize).map(|chunk| self.windows(bytes, chunk)).collect()
    }
}

impl Task for TextData {
    fn seq_len(&self) -> i64 {
        self.seq_len
    }

    fn train_batch(&self, batch_size: i64, rng: &mut SamplerRng) -> Batch {
        let last_start = self.train.len() - self.seq_len as usize - 1;
        let starts: Vec<usize> = (0..batch_size).map(|_| rng.below(last_start as u64 + 1) as usize).collect();
        self.windows(&self.train, &starts)
    }

    fn valid_batches(&self, batch_size: i64, n_batches: i64) -> Vec<Batch> {
        let mut rng = SamplerRng::new(VALID_SEED);
        let last_start = self.valid.len() - self.seq_len as usize - 1;
        (0..n_batches)
            .map(|_| {
                let starts: Vec<usize> = (0..batch_size).map(|_| rng.below(last_start as u64 + 1) as usize).collect();
                self.windows(&self.valid, &starts)
            })
            .collect()
    }

    fn reports_bpc(&self) -> bool {
        true
    }

    fn split_batches(&self, split: Split, batch_size: i64, max_bytes: usize) -> Result<Vec<Batch>> {
        Ok(match split {
            Split::Train => self.windows_over(&self.train, batch_size, max_bytes),
            Split::Valid => self.windows_over(&self.valid, batch_size, max_bytes),
            Split::Test => self.windows_over(&self.test, batch_size, max_bytes),
            // The whole file, windows running across the splits' borders.
            Split::All => {
                self.windows_over(&[&self.train[..], &self.valid, &self.test].concat(), batch_size, max_bytes)
            }
        })
    }

    fn scoring_split(&self) -> Split {
        Split::Test
    }

    fn check_trainable(&self) -> Result<()> {
        let window = self.seq_len as usize + 1;
        for (name, split) in [("train", &self.train), ("valid", &self.valid), ("test", &self.test)] {
            if split.len() < window {
                bail!(
                    "its {name} split has {} bytes, fewer than one window of seq_len + 1 = {window}: use a longer file or a shorter train.seq_len",
                    split.len()
                );
            }
        }
        Ok(())
    }

    fn check_model(&self, model: &ModelConfig) -> Result<()> {
        if model.vocab_size - model.compat.token_offset < 256 {
            bail!(
                "byte-level text needs model.vocab_size - model.compat.token_offset >= 256, not {}",
                model.vocab_size - model.compat.token_offset
            );
        }
        if self.seq_len > model.max_seq_len {
            bail!("train.seq_len {} exceeds model.max_seq_len {}", self.seq_len, model.max_seq_len);
        }
        Ok(())
    }
}
