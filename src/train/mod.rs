//! `reformer train`: the training loop, with validation, checkpoints, exact resume,
//! graceful interruption, a guard against non-finite losses and float16 loss scaling
//! (loss_scale.rs). The phases of a run are `Trainer`'s (trainer.rs); `run` is the loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use serde_json::json;
use tch::{Device, Tensor};

use crate::distributed::ProcessGroup;
use crate::hash_rounds_sweep::{self, TABLE2_ROUNDS};
use crate::model::ReformerLm;
use crate::run_config::RunConfig;
use crate::run_dir::RunDir;
use crate::score::{evaluate, Score};
use crate::tasks::download::download_enwik8;
use crate::tasks::{Batch, TaskKind, DEFAULT_ENWIK8_PATH};

mod args;
mod loss_scale;
mod metrics;
mod state;
mod trainer;
pub use crate::precision::Precision;
pub use args::TrainArgs;
pub use loss_scale::LossScale;
pub use state::TrainState;
use trainer::Trainer;

/// `reformer train`: the loop over `Trainer`'s phases. Every way out (the last step, the
/// time limit, an interrupt, a non-finite loss) ends in `Trainer::finish`.
pub fn run(opts: TrainArgs) -> Result<()> {
    let mut trainer = Trainer::new(opts)?;
    install_interrupt_handler();
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

/// Why the loop ended.
enum Stop {
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

/// The configuration of a new run: a config file, a preset or the task's default (its
/// model replaced by the `--init-from` run's), then the `--set` overrides and the command line's changes: `--task` and `--data` replace
/// the configured ones when given (data configured for another task does not carry
/// over), `--steps` the number of steps, `--precision` the arithmetic.
fn resolve_config(opts: &TrainArgs) -> Result<RunConfig> {
    let mut base = match (&opts.config, &opts.preset) {
        (Some(path), _) => RunConfig::from_file(path)?,
        (None, Some(name)) => RunConfig::preset(name)?,
        (None, None) => RunConfig::preset(opts.task.unwrap_or_default().default_preset())?,
    };
    if let Some(source) = &opts.init_from {
        base.model = RunDir::open(source)?.1.model;
    }
    let mut cfg = base.with_overrides(&opts.set)?;
    if let Some(task) = opts.task.filter(|&task| task != cfg.task) {
        cfg.task = task;
        cfg.data = None;
    }
    if let Some(data) = &opts.data {
        cfg.data = Some(data.clone());
    }
    if let Some(steps) = opts.steps {
        cfg.train.steps = steps;
    }
    if let Some(precision) = opts.precision {
        cfg.train.precision = precision;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The run folder to resume and its configuration, checked against the command line: a
/// resumed run keeps its precision.
fn open_run(dir: &Path, opts: &TrainArgs) -> Result<(RunDir, RunConfig)> {
    let (run_dir, cfg) = RunDir::open(dir)?;
    cfg.validate()?;
    if let Some(precision) = opts.precision.filter(|&precision| precision != cfg.train.precision) {
        bail!(
            "--precision {} differs from the run's {} (its config.json): a resumed run keeps its precision",
            precision.name(),
            cfg.train.precision.name()
        );
    }
    Ok((run_dir, cfg))
}

/// Fetches enwik8 to the run's data path (default data/enwik8) when it is not there.
fn download_enwik8_if_missing(cfg: &RunConfig) -> Result<()> {
    let path = cfg.data.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ENWIK8_PATH));
    if !path.exists() {
        eprintln!("downloading enwik8 to {}", path.display());
        download_enwik8(&path)?;
    }
    Ok(())
}

fn default_out(task: TaskKind) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let name = format!("{:?}", task).to_lowercase();
    // The process id keeps two runs started in the same second apart.
    PathBuf::from("checkpoints").join(format!("{name}-{secs}-{}", std::process::id()))
}

/// Set by the first Ctrl-C / SIGTERM: finish the step, save, stop.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if STOP_REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting now without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing this step and saving a checkpoint (again to exit at once)");
    });
}

fn interrupt_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// Fault injection for tests, read from the environment once, at the start:
/// `REFORMER_INJECT_NAN_AT_STEP=N` makes step N's loss NaN, as a numerical blow-up would
/// (for the non-finite guard); `REFORMER_INJECT_OVERFLOW_AT_STEP=N` makes step N's
/// gradients inf, as a float16 overflow would (for the loss scaler), and
/// `REFORMER_INJECT_OVERFLOW_FROM_STEP=N` every step's from N on (a diverged run);
/// `REFORMER_INJECT_DIVERGENCE_AT_STEP=N` makes rank 1 nudge a parameter after step N's
/// update, as a rank that went its own way would (for the guard that keeps the ranks'
/// parameters equal).
struct Faults {
    nan_at_step: Option<i64>,
    overflow_at_step: Option<i64>,
    overflow_from_step: Option<i64>,
    divergence_at_step: Option<i64>,
}

impl Faults {
    fn from_env() -> Self {
        let step = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<i64>().ok());
        Self {
            nan_at_step: step("REFORMER_INJECT_NAN_AT_STEP"),
            overflow_at_step: step("REFORMER_INJECT_OVERFLOW_AT_STEP"),
            overflow_from_step: step("REFORMER_INJECT_OVERFLOW_FROM_STEP"),
            divergence_at_step: step("REFORMER_INJECT_DIVERGENCE_AT_STEP"),
        }
    }

    /// What is added to step `step`'s loss: NaN at the chosen step, else 0.
    fn loss_offset(&self, step: i64) -> f64 {
        if self.nan_at_step == Some(step) {
            f64::NAN
        } else {
            0.0
        }
    }

    /// After step `step`'s backward (and the ranks' averaging): a gradient made inf at the
    /// chosen step.
    fn overflow(&self, step: i64, variables: &[Tensor]) {
        if self.overflow_at_step == Some(step) || self.overflow_from_step.is_some_and(|from| step >= from) {
            if let Some(mut grad) = variables.iter().map(Tensor::grad).find(Tensor::defined) {
                tch::no_grad(|| {
                    let _ = grad.fill_(f64::INFINITY);
                });
            }
        }
    }

    /// After step `step`'s update: the nudge on rank 1 at the chosen step.
    fn diverge(&self, rank: i64, step: i64, variables: &[Tensor]) {
        if rank == 1 && self.divergence_at_step == Some(step) {
            tch::no_grad(|| {
                let mut first = variables[0].shallow_clone();
                first += 1e-3;
            });
        }
    }
}

/// Accuracy with 1, 2, 4 and 8 hash rounds (and full attention: not swapped in here),
/// printed like a row of the paper's Table 2, scored under `precision`.
fn table2_row(
    model: &mut ReformerLm,
    batches: &[Batch],
    seq_len: i64,
    device: Device,
    precision: Precision,
) -> Result<serde_json::Value> {
    let settings = TABLE2_ROUNDS.map(Some);
    let scores = hash_rounds_sweep::sweep(model, &settings, seq_len, |model, _| {
        precision.autocast(device, || evaluate(model, batches, device))
    })?;
    let mut row = serde_json::Map::new();
    let mut line = format!("trained with {} rounds, evaluated with:", model.cfg.lsh.n_hashes);
    for (rounds, score) in TABLE2_ROUNDS.iter().zip(&scores) {
        line += &format!("  {rounds}: {:.1}%", 100.0 * score.accuracy);
        row.insert(rounds.to_string(), json!(score.accuracy));
    }
    eprintln!("{line}");
    Ok(serde_json::Value::Object(row))
}

fn describe_score(score: &Score, bpc: bool) -> String {
    if bpc {
        format!("loss {:.4}, {:.4} bits per byte", score.loss, score.bpc)
    } else {
        format!("loss {:.4}, second-copy accuracy {:.2}%", score.loss, 100.0 * score.accuracy)
    }
}

/// For each flag, whether any rank raised it (without a group: the flag itself).
fn agree_any<const N: usize>(group: Option<&ProcessGroup>, flags: [bool; N]) -> Result<[bool; N]> {
    let Some(group) = group else { return Ok(flags) };
    let sums = group.sum_f64(&flags.map(|f| if f { 1.0 } else { 0.0 }))?;
    Ok(std::array::from_fn(|i| sums[i] > 0.0))
}
