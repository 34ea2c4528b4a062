//! Fault injection for tests, read from the environment once, at the start:
//! `REFORMER_INJECT_NAN_AT_STEP=N` makes step N's loss NaN, as a numerical blow-up would
//! (for the non-finite guard); `REFORMER_INJECT_OVERFLOW_AT_STEP=N` makes step N's
//! gradients inf, as a float16 overflow would (for the loss scaler), and
//! `REFORMER_INJECT_OVERFLOW_FROM_STEP=N` every step's from N on (a diverged run);
//! `REFORMER_INJECT_DIVERGENCE_AT_STEP=N` makes rank 1 nudge a parameter after step N's
//! update, as a rank that went its own way would (for the guard that keeps the ranks'
//! parameters equal).

use tch::Tensor;

/// The faults this process injects (none unless the variables above are set).
pub struct Faults {
    nan_at_step: Option<i64>,
    overflow_at_step: Option<i64>,
    overflow_from_step: Option<i64>,
    divergence_at_step: Option<i64>,
}

impl Faults {
    pub fn from_env() -> Self {
        let step = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<i64>().ok());
        Self {
            nan_at_step: step("REFORMER_INJECT_NAN_AT_STEP"),
            overflow_at_step: step("REFORMER_INJECT_OVERFLOW_AT_STEP"),
            overflow_from_step: step("REFORMER_INJECT_OVERFLOW_FROM_STEP"),
            divergence_at_step: step("REFORMER_INJECT_DIVERGENCE_AT_STEP"),
        }
    }

    /// What is added to step `step`'s loss: NaN at the chosen step, else 0.
    pub fn loss_offset(&self, step: i64) -> f64 {
        if self.nan_at_step == Some(step) {
            f64::NAN
        } else {
            0.0
        }
    }

    /// After step `step`'s backward (and the ranks' averaging): a gradient made inf at the
    /// chosen step.
    pub fn overflow(&self, step: i64, variables: &[Tensor]) {
        if self.overflow_at_step == Some(step) || self.overflow_from_step.is_some_and(|from| step >= from) {
            if let Some(mut grad) = variables.iter().map(Tensor::grad).find(Tensor::defined) {
                tch::no_grad(|| {
                    let _ = grad.fill_(f64::INFINITY);
                });
            }
        }
    }

    /// After step `step`'s update: the nudge on rank 1 at the chosen step.
    pub fn diverge(&self, rank: i64, step: i64, variables: &[Tensor]) {
        if rank == 1 && self.divergence_at_step == Some(step) {
            tch::no_grad(|| {
                let mut first = variables[0].shallow_clone();
                first += 1e-3;
            });
        }
    }
}
