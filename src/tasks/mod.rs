//! Training data: the synthetic duplication task and byte-level text (enwik8 or any file).

pub mod download;
pub mod duplication;
pub mod rng;
pub mod text;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

pub use rng::SamplerRng;

/// Where `--task enwik8` looks when no `--data` is given.
pub const DEFAULT_ENWIK8_PATH: &str = "data/enwik8";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// The paper's synthetic task: predict the second copy of `0 w 0 w`.
    #[default]
    Duplication,
    /// Byte-level enwik8 (default file data/enwik8).
    Enwik8,
    /// Any file as bytes (--data FILE).
    Text,
}

impl TaskKind {
    pub fn default_preset(self) -> &'static str {
        match self {
            Self::Duplication => "duplication",
            Self::Enwik8 | Self::Text => "enwik8-cpu",
        }
    }
}

/// A part of a text data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Valid,
    Test,
    /// The three splits one after the other.
    All,
}

/// One batch: the model reads `inputs` and is scored on `targets` where `weights` > 0.
///
/// # Shapes
/// `inputs`, `targets`: (B, T) int64; `weights`: (B, T) float.
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub weights: Tensor,
}

impl Batch {
    pub fn to_device(&self, device: Device) -> Self {
        Self { inputs: self.inputs.to(device), targets: self.targets.to(device), weights: self.weights.to(device) }
    }

    /// Sequences `start..start + len` of the batch.
    pub fn rows(&self, start: i64, len: i64) -> Self {
        let rows = |t: &Tensor| t.narrow(0, start, len);
        Self { inputs: rows(&self.inputs), targets: rows(&self.targets), weights: rows(&self.weights) }
    }

    /// The batch in pieces of at most `max_rows` sequences (all of it when None), each
    /// with the index of its first row.
    pub fn pieces(&self, max_rows: Option<i64>) -> Vec<(i64, Self)> {
        let rows = self.inputs.size()[0];
        let step = max_rows.unwrap_or(rows).clamp(1, rows.max(1));
        (0..rows).step_by(step as usize).map(|start| (start, self.rows(start, step.min(rows - start)))).collect()
    }

    pub fn n_tokens(&self) -> i64 {
        self.inputs.numel() as i64
    }
}

/// A source of training and evaluation batches.
pub trait Task {
    /// Tokens the model reads per sequence.
    fn seq_len(&self) -> i64;
    /// A random training batch drawn from `rng`.
    fn train_batch(&self, batch_size: i64, rng: &mut SamplerRng) -> Batch;
    /// The fixed validation batches (the same on every call).
    fn valid_batches(&self, batch_size: i64, n_batches: i64) -> Vec<Batch>;
    /// Whether the figure of merit is bits per byte (LM) or second-copy accuracy.
    fn reports_bpc(&self) -> bool;
    /// Checks that the model can serve this task.
    fn check_model(&self, model: &crate::model::ModelConfig) -> Result<()>;
    /// Checks that there is enough data to train on (every split holds a window);
    /// scoring needs only the split it scores.
    fn check_trainable(&self) -> Result<()> {
        Ok(())
    }
    /// Non-overlapping windows over `split`, at most `max_bytes` of it, in batches.
    fn split_batches(&self, split: Split, batch_size: i64, max_bytes: usize) -> Result<Vec<Batch>>;
    /// The split a trained model is scored on: the held-out test split, or the
    /// validation set where the task has nothing else.
    fn scoring_split(&self) -> Split;
}
