//! AdamW with decoupled weight decay, global gradient-norm clipping, and the learning
//! rate schedule. Written out (rather than tch's optimizer) so that its state can be
//! saved in checkpoints and a resumed run continues bit for bit.

use anyhow::{bail, Context, Result};
use tch::{nn, Kind, Tensor};

use crate::run_config::{Schedule, TrainConfig};

extern "C" {
    /// From `csrc/libtorch_calls.cpp`.
    fn reformer_clear_grad(tensor: *const torch_sys::C_tensor);
}

pub struct AdamW {
    /// Trainable parameters by checkpoint name, sorted by name.
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Updates applied so far (Adam's bias-correction step count).
    pub n_updates: i64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    pub fn new(vs: &nn::VarStore, cfg: &TrainConfig) -> Self {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |params: &Vec<(String, Tensor)>| params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self {
            exp_avg: zeros(&params),
            exp_avg_sq: zeros(&params),
            params,
            n_updates: 0,
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
        }
    }

    /// Drops every gradient. The next backward then hands each gradient over instead of
    /// adding it into a zeroed buffer (where the incoming gradients and the buffers,
    /// 4 bytes per parameter each, would be alive together at the end of backward).
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            // SAFETY: `p` is a live tensor; the call only resets its gradient field.
            unsafe { reformer_clear_grad(p.as_ptr()) };
        }
    }

    /// The global L2 norm of all gradients, after scaling them down to `max_norm` when
    /// it is exceeded. A non-finite norm is returned as is and nothing is scaled; without
    /// any gradient the norm is 0.
    pub fn clip_grad_norm(&mut self, max_norm: Option<f64>) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect();
            if grads.is_empty() {
                return 0.0;
            }
            let squares: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float)).collect();
            let norm = Tensor::stack(&squares, 0).sum(Kind::Float).sqrt().double_value(&[]);
            if let Some(max_norm) = max_norm {
                if norm.is_finite() && norm > max_norm {
                    for mut g in grads {
                        let _ = g.g_mul_scalar_(max_norm / norm);
                    }
                }
            }
            norm
        })
    }

    /// One AdamW update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.n_updates += 1;
        let bias1 = 1.0 - self.beta1.powi(self.n_updates as i32);
        let bias2 = 1.0 - self.beta2.powi(self.n_updates as i32);
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter_mut().enumerate() {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let _ = self.exp_avg[i].g_mul_scalar_(self.beta1).g_add_(&(&grad * (1.0 - self.beta1)));
                let _ = self.exp_avg_sq[i].g_mul_scalar_(self.beta2).g_add_(&(grad.square() * (1.0 - self.beta2)));
                // Decay matrices only: biases, norms and embeddings' scales keep their size.
                if self.weight_decay > 0.0 && p.dim() >= 2 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let denom = (&self.exp_avg_sq[i] / bias2).sqrt() + self.eps;
                let _ = p.g_sub_(&(&self.exp_avg[i] / &denom * (lr / bias1)));
            }
        });
    }

    /// The optimizer's state as named tensors, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = Vec::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            state.push((format!("exp_avg.{name}"), self.exp_avg[i].shallow_clone()));
            state.push((format!("exp_avg_sq.{name}"), self.exp_avg_sq[i].shallow_clone()));
        }
        state
    }

    /// Restores `state()` as saved; every parameter's moments must be present.
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>, n_updates: i64) -> Result<()> {
        let state: std::collections::HashMap<String, Tensor> = state.into_iter().collect();
        tch::no_grad(|| -> Result<()> {
            for (i, (name, _)) in self.params.iter().enumerate() {
                for (prefix, slot) in [("exp_avg", &mut self.exp_avg[i]), ("exp_avg_sq", &mut self.exp_avg_sq[i])] {
                    let key = format!("{prefix}.{name}");
                    let saved = state.get(&key).with_context(|| format!("optimizer state lacks {key}"))?;
                    if saved.size() != slot.size() {
                        bail!("optimizer state {key} has shape {:?}, the model {:?}", saved.size(), slot.size());
                    }
                    slot.copy_(saved);
                }
            }
            Ok(())
        })?;
        self.n_updates = n_updates;
        Ok(())
    }
}

/// The learning rate at optimizer step `step` (0-based), `elapsed_secs` into training:
/// linear warm-up to `lr`, then the configured decay. The cosine ends at `cfg.steps`, or
/// at `cfg.minutes` of training when the run has a time budget; past its end the lr
/// stays at its final value.
pub fn learning_rate(cfg: &TrainConfig, step: i64, elapsed_secs: f64) -> f64 {
    let step = step + 1;
    let warmup = cfg.warmup_steps.max(1);
    if step <= warmup {
        return cfg.lr * step as f64 / warmup as f64;
    }
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Rsqrt => cfg.lr * (warmup as f64 / step as f64).sqrt(),
        Schedule::Cosine => {
            let progress = match cfg.minutes {
                Some(minutes) => (elapsed_secs / (60.0 * minutes)).min(1.0),
                None => ((step - warmup) as f64 / (cfg.steps - warmup).max(1) as f64).min(1.0),
            };
            let floor = cfg.lr * cfg.final_lr_fraction;
            floor + (cfg.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_norm_of_no_gradients_is_zero() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _weight = vs.root().zeros("weight", &[2, 3]);
        let mut optimizer = AdamW::new(&vs, &TrainConfig::default());
        optimizer.zero_grad();
        assert_eq!(optimizer.clip_grad_norm(Some(1.0)), 0.0);
        assert_eq!(optimizer.clip_grad_norm(None), 0.0);
    }

    #[test]
    fn the_cosine_stays_at_its_final_value_past_the_last_step() {
        let cfg = TrainConfig { steps: 10, warmup_steps: 2, schedule: Schedule::Cosine, ..TrainConfig::default() };
        let final_lr = cfg.lr * cfg.final_lr_fraction;
        for step in [9, 10, 15, 1000] {
            assert_eq!(learning_rate(&cfg, step, 0.0), final_lr, "step {step}");
        }
        assert!(learning_rate(&cfg, 5, 0.0) > final_lr);
    }

    /// With a time budget the cosine follows the clock: half-way at half the minutes,
    /// at its floor once they are spent, whatever the step; warm-up still counts steps.
    #[test]
    fn a_time_budget_makes_the_cosine_follow_the_clock() {
        let cfg = TrainConfig {
            steps: 1_000_000,
            minutes: Some(10.0),
            warmup_steps: 4,
            schedule: Schedule::Cosine,
            ..TrainConfig::default()
        };
        let floor = cfg.lr * cfg.final_lr_fraction;
        assert_eq!(learning_rate(&cfg, 1, 500.0), cfg.lr * 2.0 / 4.0, "warm-up");
        assert!((learning_rate(&cfg, 50, 300.0) - (floor + cfg.lr) / 2.0).abs() < 1e-12);
        for step in [50, 5_000] {
            assert_eq!(learning_rate(&cfg, step, 600.0), floor);
            assert_eq!(learning_rate(&cfg, step, 900.0), floor);
        }
        assert!(learning_rate(&cfg, 50, 60.0) > learning_rate(&cfg, 50, 120.0));
    }
}
