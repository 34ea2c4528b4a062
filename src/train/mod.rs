//! `reformer train`: the training loop, with validation, checkpoints, exact resume,
//! graceful interruption, a guard against non-finite losses and float16 loss scaling
//! (loss_scale.rs). The phases of a run are `Trainer`'s (trainer.rs); `run` is the loop.

use anyhow::Result;

mod args;
mod interrupt;
mod loss_scale;
mod metrics;
mod state;
mod trainer;
pub use args::TrainArgs;
pub use loss_scale::LossScale;
pub use state::TrainState;
use trainer::Trainer;

/// `reformer train`: the loop over `Trainer`'s phases. Every way out (the last step, the
/// time limit, an interrupt, a non-finite loss) ends in `Trainer::finish`.
pub fn run(opts: TrainArgs) -> Result<()> {
    let mut trainer = Trainer::new(opts)?;
    interrupt::install_handler();
    let stop = loop {
        if let Some(stop) = trainer.stop_reason()? {
            break stop;
        }
        if let Some(stop) = trainer.step()? {
            break stop;
        }
        if trainer.at_log_step() {
            trainer.log()?;
        }
        if trainer.at_eval_step() {
            let is_best = trainer.validate()?;
            trainer.save(is_best)?;
        }
    };
    trainer.finish(stop)
}
