//! Where a run's starting point comes from: its own latest checkpoint (`--resume`: the
//! weights, the optimizer and the train state, continued exactly), another run's best
//! weights (`--init-from`: fine-tuning, with a fresh optimizer), or the model's fresh
//! initialisation; in each case the same on every rank.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::Trainer;
use crate::distributed;
use crate::model::weight_transfer;
use crate::precision::Precision;
use crate::run_dir::{load_train_state, load_weights, weights_file, RunDir};
use crate::train::args::TrainArgs;
use crate::train::loss_scale::LossScale;
use crate::train::state::TrainState;

impl Trainer {
    /// The trainer at its starting point: resumed (`--resume`) or from another run's
    /// weights (`--init-from`), with a loss scaler under float16, rank 0's parameters on
    /// every rank; its clock starts now.
    pub(super) fn start(mut self, opts: &TrainArgs) -> Result<Self> {
        if opts.resume.is_some() {
            self.resume()?;
        }
        if let Some(source) = &opts.init_from {
            self.init_from(source)?;
        }
        if self.cfg.train.precision == Precision::F16 {
            self.state.loss_scale.get_or_insert_with(LossScale::default);
        }
        if let Some(group) = &self.group {
            distributed::broadcast_parameters(group, &self.variables)?;
        }
        if self.is_main {
            let n_params: i64 = self.variables.iter().map(|t| t.numel() as i64).sum();
            eprintln!(
                "model: {n_params} parameters on {}; run folder {}",
                crate::device::describe(self.device),
                self.run_dir.path.display()
            );
        }
        self.started = Instant::now();
        Ok(self)
    }

    /// Loads the weights of another run's best checkpoint (fine-tuning starts there); a
    /// longer or differently laid out position table grows as `weight_transfer` says.
    fn init_from(&mut self, source: &Path) -> Result<()> {
        let (run, source_cfg) = RunDir::open(source)?;
        let checkpoint = run.best().with_context(|| format!("{} holds no checkpoint", source.display()))?;
        let model = &self.cfg.model;
        let positions = weight_transfer::load_into(
            &mut self.vs,
            &weights_file(&checkpoint),
            (&source_cfg.model.positional, source_cfg.model.max_seq_len),
            (&model.positional, model.max_seq_len),
        )?;
        if self.is_main {
            eprintln!("starting from the weights of {} ({})", checkpoint.display(), positions);
        }
        Ok(())
    }

    /// Loads the model, the optimizer and the train state (data stream, step, seed, best
    /// loss) from the run's latest checkpoint, and drops the metrics logged after it.
    fn resume(&mut self) -> Result<()> {
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
