//! Where a run's starting point comes from: its own latest checkpoint (`--resume`: the
//! weights, the optimizer and the train state, continued exactly), or another run's best
//! weights (`--init-from`: fine-tuning, with a fresh optimizer).

use std::path::Path;

use anyhow::{Context, Result};

use super::Trainer;
use crate::run_dir::{load_train_state, load_weights, RunDir};
use crate::train::state::TrainState;

impl Trainer {
    /// Loads the weights of another run's best checkpoint (fine-tuning starts there).
    pub(super) fn init_from(&mut self, source: &Path) -> Result<()> {
        let (run, _) = RunDir::open(source)?;
        let checkpoint = run.best().with_context(|| format!("{} holds no checkpoint", source.display()))?;
        load_weights(&mut self.vs, &checkpoint)?;
        if self.is_main {
            eprintln!("starting from the weights of {}", checkpoint.display());
        }
        Ok(())
    }

    /// Loads the model, the optimizer and the train state (data stream, step, seed, best
    /// loss) from the run's latest checkpoint, and drops the metrics logged after it.
    pub(super) fn resume(&mut self) -> Result<()> {
        let run_dir = &self.run_dir;
        let checkpoint =
            run_dir.latest().with_context(|| format!("{} has no checkpoint to resume", run_dir.path.display()))?;
        load_weights(&mut self.vs, &checkpoint)?;
        let (optimizer_state, saved) = load_train_state::<TrainState>(&checkpoint)?;
        self.optimizer.load_state(optimizer_state, saved.n_updates)?;
        if self.is_main {
            run_dir.truncate_metrics(saved.step)?;
            eprintln!("resuming {} at step {}", checkpoint.display(), saved.step);
            if self.last_step != self.cfg.train.steps {
                eprintln!(
                    "training to step {}; the learning-rate schedule keeps the run's {} steps",
                    self.last_step, self.cfg.train.steps
                );
            }
        }
        self.elapsed_before = saved.elapsed_secs;
        self.last_saved = saved.step;
        self.state = saved;
        Ok(())
    }
}
