//! When a run stops: its last step, a validation reaching `--target`, an interrupt, or
//! the earlier of `--time-limit` and its time budget (`train.minutes`), agreed by every
//! rank; and the clock that a time budget's learning rate follows.

use anyhow::{bail, Result};

use super::Trainer;
use crate::distributed::ProcessGroup;
use crate::train::interrupt;

/// Why the loop ended.
pub enum Stop {
    /// The last step is done.
    Done,
    /// Ctrl-C or SIGTERM (on any rank).
    Interrupted,
    /// `--time-limit` reached (on any rank).
    OutOfTime,
    /// A validation reached `--target`.
    TargetReached,
    /// A non-finite loss or gradient under `train.on_non_finite=stop`: what happened.
    NonFinite(String),
}

impl Trainer {
    /// Whether to stop before the next step, and why. Every rank stops at the same step:
    /// when any of them is interrupted or out of time.
    pub fn stop_reason(&mut self) -> Result<Option<Stop>> {
        if self.state.step >= self.last_step {
            return Ok(Some(Stop::Done));
        }
        if self.target_reached() {
            self.progress.println("target reached");
            return Ok(Some(Stop::TargetReached));
        }
        let out_of_time = self.time_limit_secs.is_some_and(|limit| self.elapsed_secs() >= limit);
        let [interrupted, out_of_time] = agree_any(self.group.as_ref(), [interrupt::requested(), out_of_time])?;
        if interrupted {
            self.progress.println("stopping at the interrupt");
            return Ok(Some(Stop::Interrupted));
        }
        if out_of_time {
            self.progress.println("time limit reached");
            return Ok(Some(Stop::OutOfTime));
        }
        Ok(None)
    }

    /// The training seconds that drive a time budget's cosine (`train.minutes`): this
    /// process's clock, or with several ranks their mean, so that every rank applies the
    /// same learning rate.
    pub(super) fn schedule_clock(&self) -> Result<f64> {
        let elapsed = self.elapsed_secs();
        match &self.group {
            Some(group) if self.cfg.train.minutes.is_some() => {
                Ok(group.sum_f64(&[elapsed])?[0] / group.world_size as f64)
            }
            _ => Ok(elapsed),
        }
    }

    /// Whether the newest validation, taken at the current step, reaches `--target`.
    /// Every rank holds the same score (the validation sums over all ranks).
    fn target_reached(&self) -> bool {
        match (self.target, &self.last_valid) {
            (Some(target), Some((step, score))) if *step == self.state.step => {
                if self.task.reports_bpc() {
                    score.bpc <= target
                } else {
                    score.accuracy >= target
                }
            }
            _ => false,
        }
    }
}

/// For each flag, whether any rank raised it (without a group: the flag itself).
fn agree_any<const N: usize>(group: Option<&ProcessGroup>, flags: [bool; N]) -> Result<[bool; N]> {
    let Some(group) = group else { return Ok(flags) };
    let sums = group.sum_f64(&flags.map(|f| if f { 1.0 } else { 0.0 }))?;
    Ok(std::array::from_fn(|i| sums[i] > 0.0))
}

/// Checks that a `--target` can be reached by the task's figure: second-copy accuracy is
/// a fraction in [0, 1] (0: stop at the first validation); bits per byte are positive (at most 8 for bytes, well above
/// anything a trained model scores).
pub(super) fn check_target(target: Option<f64>, reports_bpc: bool) -> Result<()> {
    let Some(target) = target else { return Ok(()) };
    if reports_bpc {
        if !(target > 0.0 && target.is_finite()) {
            bail!("--target {target}: bits per byte must be positive (e.g. --target 1.3)");
        }
    } else if !(0.0..=1.0).contains(&target) {
        bail!("--target {target}: second-copy accuracy is a fraction in [0, 1] (e.g. --target 0.99, not 99)");
    }
    Ok(())
}

/// The earlier of `--time-limit` and the run's time budget (`train.minutes`), in seconds.
pub(super) fn time_limit_secs(time_limit_minutes: Option<f64>, budget_minutes: Option<f64>) -> Option<f64> {
    let earliest = match (time_limit_minutes, budget_minutes) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    earliest.map(|minutes| minutes * 60.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_must_be_reachable_by_the_task_figure() {
        for (target, bpc) in
            [(None, false), (Some(0.99), false), (Some(1.0), false), (Some(1.3), true), (Some(9.0), true)]
        {
            assert!(check_target(target, bpc).is_ok(), "{target:?} (bpc {bpc})");
        }
        for (target, bpc) in [(99.0, false), (1.5, false), (-0.5, false), (0.0, true), (-1.0, true), (f64::NAN, true)] {
            assert!(check_target(Some(target), bpc).is_err(), "{target} (bpc {bpc})");
        }
    }
}
