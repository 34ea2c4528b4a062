//! One training run in named phases: `new` (configuration in `trainer/configure.rs`,
//! process group, model, and `--resume` or `--init-from` in `trainer/restore.rs`), `step`
//! (`trainer/step.rs`), `log`, `validate` (`trainer/validation.rs`), `save` and `finish`
//! (the exit save, the final scores, the Table-2 row, the `--json` summary, in
//! `trainer/finish.rs`); when to stop is `trainer/stopping.rs`'s. `train::run` strings
//! them into the loop. Training and every score run under the run's `train.precision`.

use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;
use tch::{nn, Device, Tensor};

mod configure;
mod faults;
mod finish;
mod restore;
mod step;
mod stopping;
mod validation;

use crate::distributed::{self, Backend, LaunchEnv, ProcessGroup};
use crate::model::ReformerLm;
use crate::optimizer::AdamW;
use crate::precision::Precision;
use crate::progress::Progress;
use crate::run_config::RunConfig;
use crate::run_dir::RunDir;
use crate::score::Score;
use crate::tasks::{Batch, Task};
use crate::train::args::TrainArgs;
use crate::train::metrics::{window_message, MetricsWindow};
use crate::train::state::TrainState;
use faults::Faults;

/// One run being trained: its configuration, data, model, optimizer and run folder, and
/// where it stands.
pub struct Trainer {
    cfg: RunConfig,
    /// The step at which training stops: `train.steps`, or `--steps` on resume, where
    /// `train.steps` (config.json's) stays the horizon of the learning-rate schedule.
    last_step: i64,
    device: Device,
    /// Bytes of the test split scored at the end.
    eval_bytes: usize,
    json: bool,
    time_limit_secs: Option<f64>,
    /// `--target`: the validation figure at which the run stops.
    target: Option<f64>,
    /// The learning rate of the newest step.
    last_lr: f64,
    faults: Faults,
    task: Box<dyn Task>,
    group: Option<ProcessGroup>,
    /// Rank 0 alone writes: the run folder, metrics, checkpoints, progress.
    is_main: bool,
    run_dir: RunDir,
    vs: nn::VarStore,
    model: ReformerLm,
    optimizer: AdamW,
    variables: Vec<Tensor>,
    valid_batches: Vec<Batch>,
    state: TrainState,
    started: Instant,
    /// Training time of the run before this process (resumed runs), in seconds.
    elapsed_before: f64,
    progress: Progress,
    window: MetricsWindow,
    all_reduce_secs: f64,
    /// The step of the newest checkpoint (-1: none yet).
    last_saved: i64,
    /// The newest validation score and its step.
    last_valid: Option<(i64, Score)>,
}

impl Trainer {
    /// Resolves the configuration, joins the process group (when launched as a worker),
    /// builds the model and optimizer, and with `--resume` resumes them. The only reader
    /// of the options (with the `configure` functions and `start` it hands them to).
    pub fn new(opts: TrainArgs) -> Result<Self> {
        let device = opts.run.setup()?;
        if let Some(steps) = opts.steps.filter(|&steps| steps < 0) {
            bail!("--steps {steps} must not be negative");
        }
        let launch = LaunchEnv::from_env()?;
        let device = match (&launch, device) {
            (Some(launch), Device::Cuda(_)) => Device::Cuda(launch.local_rank as usize),
            (_, device) => device,
        };
        let (resumed, mut cfg) = configure::choose_run(&opts, device)?;
        // `auto` decided here, so that config.json records the precision used.
        let auto_precision = cfg.train.precision == Precision::Auto;
        cfg.train.precision = cfg.train.precision.resolve(device);
        if let Some(budget) = opts.memory_budget {
            configure::plan_memory(&mut cfg, budget, device, launch.as_ref().is_none_or(|l| l.rank == 0))?;
        }
        // On resume `--steps` moves only where training stops; config.json stays as it is.
        let last_step = opts.steps.unwrap_or(cfg.train.steps);
        let task = configure::trainable_task(&cfg, &opts)?;
        let group = join_group(launch.as_ref(), &opts, device)?;
        let is_main = group.as_ref().is_none_or(ProcessGroup::is_main);
        let run_dir = configure::run_folder(resumed, &opts, &cfg, is_main)?;
        let world_size = await_run_folder(group.as_ref(), &cfg)?;
        if is_main {
            if auto_precision {
                eprintln!("precision: {} ({})", cfg.train.precision.name(), Precision::auto_reason(device));
            }
            eprintln!("config: {}", serde_json::to_string(&cfg)?);
        }

        tch::manual_seed(opts.run.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = ReformerLm::new(vs.root(), &cfg.model);
        let optimizer = AdamW::new(&vs, &cfg.train);
        let variables = vs.trainable_variables();
        // Evaluation batches hold every rank's sequences (rank r scores its share), so the
        // scores are over the same sequences whatever the number of workers.
        let valid_batches = task.valid_batches(cfg.train.batch_size * world_size, cfg.train.eval_batches);
        let trainer = Self {
            last_step,
            device,
            eval_bytes: opts.eval_bytes,
            json: opts.json,
            time_limit_secs: stopping::time_limit_secs(opts.time_limit_minutes, cfg.train.minutes),
            target: opts.target,
            last_lr: 0.0,
            faults: Faults::from_env(),
            task,
            is_main,
            run_dir,
            vs,
            model,
            optimizer,
            variables,
            valid_batches,
            state: TrainState::new(opts.run.seed),
            started: Instant::now(),
            elapsed_before: 0.0,
            progress: if is_main { Progress::new("train", last_step as u64) } else { Progress::silent() },
            window: MetricsWindow::default(),
            all_reduce_secs: 0.0,
            last_saved: -1,
            last_valid: None,
            group,
            cfg,
        };
        trainer.start(&opts)
    }

    /// Whether the step just taken ends a log interval.
    pub fn at_log_step(&self) -> bool {
        self.state.step % self.cfg.train.log_every == 0 || self.state.step == self.last_step
    }

    /// Whether the step just taken is validated and saved.
    pub fn at_eval_step(&self) -> bool {
        self.state.step % self.cfg.train.eval_every == 0 || self.state.step == self.last_step
    }

    /// Writes the log interval's record to metrics.jsonl and the progress line; with
    /// several ranks, checks first that their parameters still agree.
    pub fn log(&mut self) -> Result<()> {
        let mut record =
            self.window.flush(self.state.step, self.last_lr, self.state.elapsed_secs, self.task.reports_bpc());
        if let Some(scaler) = &self.state.loss_scale {
            record["loss_scale"] = json!(scaler.scale);
        }
        if let Some(group) = &self.group {
            distributed::check_parameters_agree(group, &self.variables)?;
            record["world_size"] = json!(group.world_size);
            record["all_reduce_secs_per_step"] = json!(self.all_reduce_secs / self.cfg.train.log_every as f64);
            self.all_reduce_secs = 0.0;
        }
        self.progress.update(self.state.step as u64, window_message(&record));
        if self.is_main {
            self.run_dir.log_metrics(&record)?;
        }
        Ok(())
    }

    /// Saves the checkpoint of the current step (rank 0 writes it), marked best when
    /// `is_best`: the one place where checkpoints are written.
    pub fn save(&mut self, is_best: bool) -> Result<()> {
        if self.is_main {
            let keep_last = self.cfg.train.keep_last;
            self.run_dir.save(self.state.step, &self.vs, &self.optimizer.state(), &self.state, is_best, keep_last)?;
        }
        self.last_saved = self.state.step;
        Ok(())
    }

    fn rank(&self) -> i64 {
        self.group.as_ref().map_or(0, |g| g.rank)
    }

    fn world_size(&self) -> i64 {
        self.group.as_ref().map_or(1, |g| g.world_size)
    }

    fn elapsed_secs(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }
}

/// The process group of a worker launched by `--nproc` or a cluster launcher (`launch`),
/// joined over `--dist-backend`; none for a single process.
fn join_group(launch: Option<&LaunchEnv>, opts: &TrainArgs, device: Device) -> Result<Option<ProcessGroup>> {
    let Some(launch) = launch else { return Ok(None) };
    let backend = opts.dist_backend.unwrap_or_else(|| Backend::default_for(device));
    Ok(Some(ProcessGroup::join(launch, backend, device, opts.dist_timeout)?))
}

/// Waits until rank 0 has made the run folder (the other ranks open it only then) and
/// returns the number of workers (1 without a group).
fn await_run_folder(group: Option<&ProcessGroup>, cfg: &RunConfig) -> Result<i64> {
    let Some(group) = group else { return Ok(1) };
    group.barrier()?;
    if group.is_main() {
        eprintln!("data parallel: {} workers, {} sequences each per step", group.world_size, cfg.train.batch_size);
    }
    Ok(group.world_size)
}
