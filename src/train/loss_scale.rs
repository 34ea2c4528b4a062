//! Dynamic loss scaling for float16 training, as PyTorch's `torch.amp.GradScaler` does it:
//! the loss is multiplied by a large scale before backward, so that small gradients do
//! not underflow float16; the gradients are divided by it before clipping; a step whose
//! gradients overflowed (inf or NaN) applies no update and halves the scale, and every
//! `GROWTH_INTERVAL` consecutive good steps double it. Unlike GradScaler it gives up:
//! when the scale falls below `MIN_SCALE` or `MAX_CONSECUTIVE_OVERFLOWS` steps in a row
//! overflow, the gradients overflow float16 whatever the scale, the mark of a run that
//! diverged (a scale halved some 1,100 times would reach 0, and 1/scale infinity).

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The first scale, 2^16 (GradScaler's `init_scale`).
pub const INIT_SCALE: f64 = 65536.0;
/// Factor on the scale after `GROWTH_INTERVAL` good steps (GradScaler's `growth_factor`).
pub const GROWTH_FACTOR: f64 = 2.0;
/// Factor on the scale after an overflow (GradScaler's `backoff_factor`).
pub const BACKOFF_FACTOR: f64 = 0.5;
/// Consecutive good steps before the scale grows (GradScaler's `growth_interval`).
pub const GROWTH_INTERVAL: i64 = 2000;

/// Below this scale even the unscaled gradients overflow float16: training stops.
pub const MIN_SCALE: f64 = 1.0;
/// Overflowed steps in a row after which training stops.
pub const MAX_CONSECUTIVE_OVERFLOWS: i64 = 50;

/// The scaler's state, saved in each checkpoint's state.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// What the loss is multiplied by before backward.
    pub scale: f64,
    /// Good steps since the last overflow or growth (GradScaler's growth tracker).
    pub good_steps: i64,
    /// Steps skipped because their gradients overflowed, over the whole run.
    pub overflow_steps: i64,
    /// Overflowed steps since the last good one (absent from earlier state.json files).
    #[serde(default)]
    pub consecutive_overflows: i64,
}

impl Default for LossScale {
    fn default() -> Self {
        Self { scale: INIT_SCALE, good_steps: 0, overflow_steps: 0, consecutive_overflows: 0 }
    }
}

impl LossScale {
    /// The loss to run backward on.
    pub fn scale(&self, loss: &Tensor) -> Tensor {
        loss * self.scale
    }

    /// Divides the gradients of `variables` by the scale (an inf or NaN stays one).
    pub fn unscale(&self, variables: &[Tensor]) {
        tch::no_grad(|| {
            for variable in variables {
                let mut grad = variable.grad();
                if grad.defined() {
                    let _ = grad.g_mul_scalar_(1.0 / self.scale);
                }
            }
        });
    }

    /// Records a step's outcome: an overflow backs the scale off; the `GROWTH_INTERVAL`-th
    /// good step in a row grows it.
    pub fn update(&mut self, overflowed: bool) {
        if overflowed {
            self.scale *= BACKOFF_FACTOR;
            self.good_steps = 0;
            self.overflow_steps += 1;
            self.consecutive_overflows += 1;
        } else {
            self.consecutive_overflows = 0;
            self.good_steps += 1;
            if self.good_steps == GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.good_steps = 0;
            }
        }
    }
}

impl LossScale {
    /// Why training should stop (see the module's doc), or None.
    pub fn exhausted(&self) -> Option<String> {
        if self.scale < MIN_SCALE {
            Some(format!(
                "float16 gradients kept overflowing: the loss scale fell to {:e}, below {MIN_SCALE} (the run diverged, or needs bf16/f32)",
                self.scale
            ))
        } else if self.consecutive_overflows >= MAX_CONSECUTIVE_OVERFLOWS {
            Some(format!(
                "float16 gradients overflowed in {} steps in a row (loss scale {}): the run diverged, or needs bf16/f32",
                self.consecutive_overflows, self.scale
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn an_overflow_halves_the_scale_and_restarts_the_growth_count() {
        let mut scaler = LossScale::default();
        for _ in 0..GROWTH_INTERVAL - 1 {
            scaler.update(false);
        }
        scaler.update(true);
        assert_eq!((scaler.scale, scaler.good_steps, scaler.overflow_steps), (INIT_SCALE * BACKOFF_FACTOR, 0, 1));
        // The good steps before the overflow do not count towards growth.
        scaler.update(false);
        assert_eq!(scaler.scale, INIT_SCALE * BACKOFF_FACTOR);
    }

    #[test]
    fn the_scale_grows_after_each_growth_interval_of_good_steps() {
        let mut scaler = LossScale::default();
        let mut scales = Vec::new();
        for _ in 0..2 * GROWTH_INTERVAL {
            scaler.update(false);
            scales.push(scaler.scale);
        }
        let grown_at: Vec<usize> = (1..scales.len()).filter(|&i| scales[i] != scales[i - 1]).collect();
        assert_eq!(grown_at, [GROWTH_INTERVAL as usize - 1, 2 * GROWTH_INTERVAL as usize - 1]);
        assert_eq!(scaler.scale, INIT_SCALE * GROWTH_FACTOR * GROWTH_FACTOR);
        assert_eq!(scaler.overflow_steps, 0);
    }

    #[test]
    fn unscaled_gradients_equal_the_gradients_of_the_unscaled_loss() {
        let leaf = || Tensor::from_slice(&[0.5f32, -2.0, 3.0]).set_requires_grad(true);
        let loss = |x: &Tensor| (x * x).sum(Kind::Float);
        let x = leaf();
        loss(&x).backward();
        let plain = x.grad();
        let x = leaf();
        let scaler = LossScale { scale: 1024.0, ..LossScale::default() };
        scaler.scale(&loss(&x)).backward();
        assert!(x.grad().allclose(&(&plain * 1024.0), 0.0, 0.0, false));
        scaler.unscale(std::slice::from_ref(&x));
        assert!(x.grad().allclose(&plain, 0.0, 0.0, false));
    }

    #[test]
    fn persistent_overflow_exhausts_the_scaler_and_a_good_step_resets_the_run() {
        let mut scaler = LossScale::default();
        let mut overflows = 0;
        while scaler.exhausted().is_none() {
            scaler.update(true);
            overflows += 1;
        }
        // 2^16 halved 17 times is 1/2: below the floor before 50 in a row.
        assert_eq!((overflows, scaler.scale), (17, 0.5));
        assert!(scaler.exhausted().unwrap().contains("below 1"));
        let mut high = LossScale { scale: 2f64.powi(120), ..LossScale::default() };
        for _ in 0..MAX_CONSECUTIVE_OVERFLOWS - 1 {
            high.update(true);
        }
        high.update(false);
        assert_eq!((high.consecutive_overflows, high.exhausted()), (0, None));
        for _ in 0..MAX_CONSECUTIVE_OVERFLOWS {
            high.update(true);
        }
        assert!(high.exhausted().unwrap().contains("50 steps in a row"));
        // A state.json from before the count loads with none counted.
        let mut old = serde_json::to_value(&high).unwrap();
        old.as_object_mut().unwrap().remove("consecutive_overflows");
        assert_eq!(serde_json::from_value::<LossScale>(old).unwrap().consecutive_overflows, 0);
    }

    #[test]
    fn the_state_round_trips_through_json_exactly() {
        let scaler = LossScale {
            scale: INIT_SCALE * BACKOFF_FACTOR.powi(7),
            good_steps: 123,
            overflow_steps: 7,
            consecutive_overflows: 3,
        };
        let text = serde_json::to_string(&scaler).unwrap();
        assert_eq!(serde_json::from_str::<LossScale>(&text).unwrap(), scaler);
    }
}
