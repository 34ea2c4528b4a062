//! What a run's checkpoints hold besides tensors (their `state.json`): the step, the data
//! sampler, the seed and everything else a resumed run needs to continue exactly.

use serde::{Deserialize, Serialize};

use super::loss_scale::LossScale;
use crate::model::seeded_random::derive_seed;
use crate::tasks::SamplerRng;

/// Tag of the data sampler's seed, derived from the run's seed (fixed: changing it would
/// change every run's data order).
const SAMPLER_SEED_TAG: u64 = 0x5A_4D_9E;

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: i64,
    /// The run's `--seed` (forward-pass seeds derive from it and the step).
    pub seed: u64,
    /// The data sampler, positioned after the last batch drawn.
    pub sampler: SamplerRng,
    /// Adam's update count (differs from `step` when steps were skipped).
    pub n_updates: i64,
    /// Lowest validation loss so far, if validated.
    pub best_valid_loss: Option<f64>,
    /// Steps skipped for a non-finite loss or gradient.
    pub skipped_steps: i64,
    /// Training time so far, in seconds, across resumes.
    pub elapsed_secs: f64,
    /// The float16 loss scaler (f16 runs only; absent from older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScale>,
}

impl TrainState {
    /// The state of a new run with `--seed` `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            step: 0,
            seed,
            sampler: SamplerRng::new(derive_seed(seed, SAMPLER_SEED_TAG)),
            n_updates: 0,
            best_valid_loss: None,
            skipped_steps: 0,
            elapsed_secs: 0.0,
            loss_scale: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_json_from_before_the_loss_scaler_still_loads() {
        let mut old = serde_json::to_value(TrainState::new(7)).unwrap();
        old.as_object_mut().unwrap().remove("loss_scale");
        let state: TrainState = serde_json::from_value(old).unwrap();
        assert!(state.loss_scale.is_none());
        let f16 = TrainState { loss_scale: Some(LossScale::default()), ..TrainState::new(7) };
        let back: TrainState = serde_json::from_str(&serde_json::to_string(&f16).unwrap()).unwrap();
        assert_eq!(back.loss_scale, f16.loss_scale);
    }
}
