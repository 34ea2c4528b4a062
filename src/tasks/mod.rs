//! Training data: the synthetic duplication task and byte-level text (enwik8 or any file).

pub mod duplication;
pub mod rng;
pub mod text;

use anyhow::Result;
use tch::{Device, Tensor};

pub use rng::SamplerRng;

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
}
