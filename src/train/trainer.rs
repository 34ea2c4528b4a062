//! One training run in named phases: `new` (configuration, process group, model, and
//! `--resume` or `--init-from`, in `trainer/restore.rs`), `step`, `log`, `validate`,
//! `save` and `finish` (the exit save, the final scores, the Table-2 row, the `--json`
//! summary). `train::run` strings them into the loop. Training and every score run under
//! the run's `train.precision`.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tch::{nn, Device, Tensor};

mod restore;
mod stopping;

use super::metrics::{window_message, MetricsWindow};
use super::state::TrainState;
use super::{
    default_out, describe_score, download_enwik8_if_missing, open_run, resolve_config, table2_row, Faults, LossScale,
    Precision, Stop, TrainArgs,
};
use crate::distributed::{self, Backend, LaunchEnv, ProcessGroup};
use crate::model::seeded_random::derive_seed;
use crate::model::{ForwardMode, ReformerLm};
use crate::optimizer::{learning_rate, AdamW};
use crate::progress::Progress;
use crate::run_config::{NonFinitePolicy, RunConfig};
use crate::run_dir::RunDir;
use crate::score::{evaluate_shared, Score};
use crate::tasks::{Batch, Split, Task, TaskKind};

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
    /// of the options.
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
        let (existing_run, cfg) = match &opts.resume {
            Some(dir) => {
                let (run_dir, cfg) = open_run(dir, &opts)?;
                (Some(run_dir), cfg)
            }
            None => (None, resolve_config(&opts)?),
        };
        // On resume `--steps` moves only where training stops; config.json stays as it is.
        let last_step = opts.steps.unwrap_or(cfg.train.steps);
        if opts.download && cfg.task == TaskKind::Enwik8 {
            download_enwik8_if_missing(&cfg)?;
        }
        // The data is checked before anything is written.
        crate::bench::memory_model::check_parameters_fit(&cfg.model)?;
        let task = cfg.build_task()?;
        task.check_trainable().with_context(|| match &cfg.data {
            Some(path) => format!("data file {}", path.display()),
            None => format!("the {:?} task's data", cfg.task),
        })?;
        stopping::check_target(opts.target, task.reports_bpc())?;
        let group = match &launch {
            Some(launch) => {
                let backend = opts.dist_backend.unwrap_or_else(|| Backend::default_for(device));
                Some(ProcessGroup::join(launch, backend, device, opts.dist_timeout)?)
            }
            None => None,
        };
        let is_main = group.as_ref().is_none_or(ProcessGroup::is_main);
        let out = opts.out.clone().unwrap_or_else(|| default_out(cfg.task));
        let run_dir = match existing_run {
            Some(mut run_dir) => {
                if is_main {
                    run_dir.lock_for_writing()?;
                }
                run_dir
            }
            None if is_main => RunDir::create(&out, &cfg)?,
            None => RunDir::unwritten(&out),
        };
        let world_size = match &group {
            Some(group) => {
                // The other ranks open the folder only once rank 0 has made it.
                group.barrier()?;
                if is_main {
                    eprintln!(
                        "data parallel: {} workers, {} sequences each per step",
                        group.world_size, cfg.train.batch_size
                    );
                }
                group.world_size
            }
            None => 1,
        };
        if is_main {
            eprintln!("config: {}", serde_json::to_string(&cfg)?);
        }

        tch::manual_seed(opts.run.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = ReformerLm::new(vs.root(), &cfg.model);
        let optimizer = AdamW::new(&vs, &cfg.train);
        let variables = vs.trainable_variables();
        let n_params: i64 = variables.iter().map(|t| t.numel() as i64).sum();
        // Evaluation batches hold every rank's sequences (rank r scores its share), so the
        // scores are over the same sequences whatever the number of workers.
        let valid_batches = task.valid_batches(cfg.train.batch_size * world_size, cfg.train.eval_batches);
        let mut trainer = Self {
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
        if opts.resume.is_some() {
            trainer.resume()?;
        }
        if let Some(source) = &opts.init_from {
            trainer.init_from(source)?;
        }
        if trainer.cfg.train.precision == Precision::F16 {
            trainer.state.loss_scale.get_or_insert_with(LossScale::default);
        }
        if let Some(group) = &trainer.group {
            distributed::broadcast_parameters(group, &trainer.variables)?;
        }
        if is_main {
            eprintln!(
                "model: {n_params} parameters on {}; run folder {}",
                crate::device::describe(device),
                trainer.run_dir.path.display()
            );
        }
        trainer.started = Instant::now();
        Ok(trainer)
    }

    /// One optimizer step over `train.grad_accumulation` micro-batches, the gradients
    /// averaged over the ranks, unscaled (f16) and clipped. A non-finite loss or gradient
    /// skips the update (the step still counts) or, under `train.on_non_finite=stop`,
    /// returns the stop. Under f16 an overflowed gradient (with a finite loss) is the loss
    /// scaler's: the update is skipped, the step still counts (its batch is consumed, the
    /// learning-rate schedule moves on, as with PyTorch's GradScaler) and the scale backs off.
    pub fn step(&mut self) -> Result<Option<Stop>> {
        self.window.begin_step();
        let lr = learning_rate(&self.cfg.train, self.state.step, self.schedule_clock()?);
        self.last_lr = lr;
        self.optimizer.zero_grad();
        let (loss_sum, correct, weight, tokens) = self.accumulate_gradients()?;
        let step = self.state.step + 1;
        self.faults.overflow(step, &self.variables);
        if let Some(scaler) = &self.state.loss_scale {
            scaler.unscale(&self.variables);
        }
        let loss = loss_sum / weight.max(1.0) + self.faults.loss_offset(step);
        let grad_norm = self.optimizer.clip_grad_norm(self.cfg.train.clip_grad_norm);
        // A non-finite loss is not float16's range at fault (the scale applies after the
        // loss): it leaves the scale as it is and goes to the guard below.
        let overflowed = match self.state.loss_scale.as_mut() {
            Some(scaler) if loss.is_finite() => {
                scaler.update(!grad_norm.is_finite());
                !grad_norm.is_finite()
            }
            _ => false,
        };
        if let Some(why) = self.state.loss_scale.as_ref().and_then(LossScale::exhausted) {
            return Ok(Some(Stop::NonFinite(format!("step {step}: {why}"))));
        }
        if overflowed {
            let scale = self.state.loss_scale.as_ref().map_or(f64::NAN, |scaler| scaler.scale);
            self.progress
                .println(&format!("step {step}: float16 gradients overflowed; update skipped, loss scale {scale}"));
        } else if loss.is_finite() && grad_norm.is_finite() {
            self.optimizer.step(lr);
            self.faults.diverge(self.rank(), step, &self.variables);
            self.window.add(loss * weight, correct, weight, tokens);
        } else {
            let what = format!("step {step}: non-finite loss {loss} or gradient norm {grad_norm}");
            match self.cfg.train.on_non_finite {
                NonFinitePolicy::Stop => return Ok(Some(Stop::NonFinite(what))),
                NonFinitePolicy::Skip => {
                    self.progress.println(&format!("{what}; update skipped"));
                    self.state.skipped_steps += 1;
                }
            }
        }
        self.state.step = step;
        self.state.n_updates = self.optimizer.n_updates;
        self.state.elapsed_secs = self.elapsed_secs();
        Ok(None)
    }

    /// Forward and backward passes over this rank's share of the step's micro-batches,
    /// then the gradients averaged over the ranks. Returns the step's summed loss
    /// (weighted), correct predictions, scored targets and tokens over all ranks.
    fn accumulate_gradients(&mut self) -> Result<(f64, f64, f64, i64)> {
        let train = &self.cfg.train;
        let (rank, world_size) = (self.rank(), self.world_size());
        let (mut loss_sum, mut correct, mut weight, mut tokens) = (0.0, 0.0, 0.0, 0i64);
        for micro in 0..train.grad_accumulation {
            // Every rank draws the whole step's sequences and keeps its own share, so the
            // ranks read disjoint parts of one seeded stream.
            let batch = self.task.train_batch(train.batch_size * world_size, &mut self.state.sampler);
            let batch = batch.rows(rank * train.batch_size, train.batch_size).to_device(self.device);
            let seed = derive_seed(self.state.seed, (self.state.step * train.grad_accumulation + micro) as u64);
            let stats = train.precision.autocast(self.device, || {
                self.model.loss(&batch.inputs, &batch.targets, Some(&batch.weights), ForwardMode::train(seed))
            })?;
            let loss = &stats.loss / train.grad_accumulation as f64;
            match &self.state.loss_scale {
                Some(scaler) => scaler.scale(&loss).backward(),
                None => loss.backward(),
            }
            loss_sum += stats.loss.double_value(&[]) * stats.weight;
            correct += stats.correct;
            weight += stats.weight;
            tokens += batch.n_tokens();
        }
        if let Some(group) = &self.group {
            let reduce_started = Instant::now();
            distributed::average_gradients(group, &self.variables, distributed::BUCKET_BYTES)?;
            let sums = group.sum_f64(&[loss_sum, correct, weight, tokens as f64])?;
            (loss_sum, correct, weight, tokens) = (sums[0], sums[1], sums[2], sums[3] as i64);
            self.all_reduce_secs += reduce_started.elapsed().as_secs_f64();
        }
        Ok((loss_sum, correct, weight, tokens))
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

    /// Scores the model on the validation batches (each rank its share), logs the score,
    /// redraws the run's `curve.svg` and keeps the best loss; returns whether this score
    /// is the best so far.
    pub fn validate(&mut self) -> Result<bool> {
        let score = self.score(&self.valid_batches)?;
        let is_best = self.state.best_valid_loss.is_none_or(|best| score.loss < best);
        if is_best {
            self.state.best_valid_loss = Some(score.loss);
        }
        if self.is_main {
            self.run_dir.log_metrics(&json!({"step": self.state.step, "valid_loss": score.loss,
                "valid_bpc": score.bpc, "valid_accuracy": score.accuracy, "elapsed": self.state.elapsed_secs}))?;
            // The picture is a convenience: a failure to draw it does not stop the run.
            if let Err(e) = crate::curves::write_run_curve(&self.run_dir.path) {
                self.progress.println(&format!("warning: curve.svg not drawn: {e:#}"));
            }
        }
        let line = format!("step {}: validation {}", self.state.step, describe_score(&score, self.task.reports_bpc()));
        self.progress.println(&line);
        self.last_valid = Some((self.state.step, score));
        Ok(is_best)
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

    /// Ends the run: saves the state the loop stopped at (unless saved already, or the
    /// stop is a non-finite loss), then reports the validation score, the test score (LM
    /// tasks) or the Table-2 row (duplication), and the `--json` summary.
    pub fn finish(mut self, stop: Stop) -> Result<()> {
        match stop {
            // The state that gave a non-finite loss is not saved: the last good one stays.
            Stop::NonFinite(_) => {}
            _ if self.last_saved == self.state.step => {}
            // At once, unvalidated: a second Ctrl-C may follow.
            Stop::Interrupted => self.save(false)?,
            // The time limit (or a run with no step left): validated, so it may be the best.
            Stop::Done | Stop::OutOfTime | Stop::TargetReached => {
                let is_best = self.validate()?;
                self.save(is_best)?;
            }
        }
        std::mem::replace(&mut self.progress, Progress::silent()).finish();
        if let Stop::NonFinite(what) = stop {
            bail!("{what}; stopped. The last good checkpoint is in {}", self.run_dir.path.display());
        }
        let valid = match self.last_valid {
            Some((step, score)) if step == self.state.step => score,
            _ => self.score(&self.valid_batches)?,
        };
        let tokens_per_sec = self.window.total_tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let mut summary = json!({
            "task": self.cfg.task, "steps": self.state.step, "skipped_steps": self.state.skipped_steps,
            "valid_loss": valid.loss, "tokens_per_sec": tokens_per_sec, "elapsed_secs": self.state.elapsed_secs,
            "checkpoint": self.run_dir.latest().map(|p| p.display().to_string()),
            "precision": self.cfg.train.precision,
        });
        if let Some(scaler) = &self.state.loss_scale {
            summary["overflow_steps"] = json!(scaler.overflow_steps);
            summary["loss_scale"] = json!(scaler.scale);
        }
        if self.is_main {
            eprintln!("final validation: {}", describe_score(&valid, self.task.reports_bpc()));
        }
        if self.task.reports_bpc() {
            summary["valid_bpc"] = json!(valid.bpc);
            let batch_size = self.cfg.train.batch_size * self.world_size();
            let test_batches = self.task.split_batches(Split::Test, batch_size, self.eval_bytes)?;
            let test = self.score(&test_batches)?;
            if self.is_main {
                eprintln!("test: {:.4} bits per byte over {} bytes", test.bpc, test.n_targets);
            }
            summary["test_bpc"] = json!(test.bpc);
        } else {
            summary["valid_accuracy"] = json!(valid.accuracy);
            if self.is_main {
                let precision = self.cfg.train.precision;
                let seq_len = self.task.seq_len();
                summary["accuracy_by_rounds"] =
                    table2_row(&mut self.model, &self.valid_batches, seq_len, self.device, precision)?;
            }
        }
        if let Some(group) = &self.group {
            summary["world_size"] = json!(group.world_size);
            // No rank leaves (and tears down the group) while another still evaluates.
            group.barrier()?;
        }
        if self.json && self.is_main {
            println!("{summary}");
        }
        Ok(())
    }

    /// `batches` scored under the run's precision, each rank its share.
    fn score(&self, batches: &[Batch]) -> Result<Score> {
        let precision = self.cfg.train.precision;
        precision.autocast(self.device, || evaluate_shared(&self.model, batches, self.device, self.group.as_ref()))?
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
