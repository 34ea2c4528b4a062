//! What a `reformer train` command line trains: a new run's configuration (a config file,
//! a preset or the task's default, then the command line's changes) or the run folder it
//! resumes, checked against the command line; the task's data, fetched and checked before
//! anything is written; and the run folder this process writes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::stopping::check_target;
use tch::Device;

use crate::hash_rounds_sweep::TABLE2_ROUNDS;
use crate::memory_plan::{self, MemoryBudget};
use crate::model::ModelConfig;
use crate::run_config::RunConfig;
use crate::run_dir::RunDir;
use crate::tasks::download::download_enwik8;
use crate::tasks::{Task, TaskKind, DEFAULT_ENWIK8_PATH};
use crate::train::args::TrainArgs;

/// The configuration of the run to train on `device`, and its run folder when it is
/// resumed.
pub fn choose_run(opts: &TrainArgs, device: Device) -> Result<(Option<RunDir>, RunConfig)> {
    match &opts.resume {
        Some(dir) => {
            let (run_dir, cfg) = open_run(dir, opts, device)?;
            Ok((Some(run_dir), cfg))
        }
        None => Ok((None, resolve_config(opts)?)),
    }
}

/// The configuration of a new run: a config file, a preset or the task's default (its
/// model replaced by the `--init-from` run's), then the `--set` overrides and the command
/// line's changes: `--task` and `--data` replace the configured ones when given (data
/// configured for another task does not carry over), `--steps` the number of steps,
/// `--precision` the arithmetic (`auto` is decided for the device by `Trainer::new`,
/// so that config.json records the precision used).
///
/// A run longer than the `--init-from` model's positions (a length curriculum: train
/// short, continue long) takes the settings that follow the length from the
/// configuration instead (`take_length_settings`), and the position tables grow
/// (`model::weight_transfer`).
fn resolve_config(opts: &TrainArgs) -> Result<RunConfig> {
    let mut base = match (&opts.config, &opts.preset) {
        (Some(path), _) => RunConfig::from_file(path)?,
        (None, Some(name)) => RunConfig::preset(name)?,
        (None, None) => RunConfig::preset(opts.task.unwrap_or_default().default_preset())?,
    };
    let mut configured_model = None;
    if let Some(source) = &opts.init_from {
        configured_model = Some(base.clone().with_overrides(&opts.set)?.model);
        base.model = RunDir::open(source)?.1.model;
    }
    let mut cfg = base.with_overrides(&opts.set)?;
    if let Some(task) = opts.task.filter(|&task| task != cfg.task) {
        cfg.task = task;
        cfg.data = None;
    }
    if let Some(configured) = configured_model.filter(|_| cfg.task_len() > cfg.model.max_seq_len) {
        take_length_settings(&mut cfg.model, configured);
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

/// The settings of `configured` that are chosen per length, into `model` (another run's
/// architecture): `max_seq_len`, the positional layout, and LSH's hash rounds and bucket
/// count (a source run's config.json records the count derived for its own length).
fn take_length_settings(model: &mut ModelConfig, configured: ModelConfig) {
    model.max_seq_len = configured.max_seq_len;
    model.positional = configured.positional;
    model.lsh.n_hashes = configured.lsh.n_hashes;
    model.lsh.n_buckets = configured.lsh.n_buckets;
    model.lsh.bucket_factors = configured.lsh.bucket_factors;
}

/// The run folder to resume and its configuration, checked against the command line: a
/// resumed run keeps its precision (`--precision auto` decided for `device`).
fn open_run(dir: &Path, opts: &TrainArgs, device: Device) -> Result<(RunDir, RunConfig)> {
    let (run_dir, cfg) = RunDir::open(dir)?;
    cfg.validate()?;
    let asked = opts.precision.map(|precision| precision.resolve(device));
    if let Some(precision) = asked.filter(|&precision| precision != cfg.train.precision) {
        bail!(
            "--precision {} differs from the run's {} (its config.json): a resumed run keeps its precision",
            precision.name(),
            cfg.train.precision.name()
        );
    }
    Ok((run_dir, cfg))
}

/// Chooses the run's execution settings for `budget` on `device` (`memory_plan`), each
/// training and scoring pass at most `train.batch_size` sequences per worker (and the
/// duplication task's closing Table-2 row scored with up to 8 hash rounds), and records
/// the plan in the configuration; `announce` prints it.
pub fn plan_memory(cfg: &mut RunConfig, budget: MemoryBudget, device: Device, announce: bool) -> Result<()> {
    let rows = cfg.train.batch_size;
    let scoring_hashes = match cfg.task {
        TaskKind::Duplication => TABLE2_ROUNDS.into_iter().max().unwrap_or(1),
        TaskKind::Enwik8 | TaskKind::Text => cfg.model.lsh.n_hashes,
    };
    let record = memory_plan::apply(cfg, budget, device, rows, rows, scoring_hashes)?;
    if announce {
        eprintln!("{}", record.line());
    }
    cfg.memory_plan = Some(record);
    Ok(())
}

/// The run's task, its data fetched (`--download`) and checked, and the model checked to
/// fit in memory and `--target` to be reachable: all before anything is written.
pub fn trainable_task(cfg: &RunConfig, opts: &TrainArgs) -> Result<Box<dyn Task>> {
    if opts.download && cfg.task == TaskKind::Enwik8 {
        download_enwik8_if_missing(cfg)?;
    }
    crate::bench::memory_model::check_parameters_fit(&cfg.model)?;
    let task = cfg.build_task()?;
    task.check_trainable().with_context(|| match &cfg.data {
        Some(path) => format!("data file {}", path.display()),
        None => format!("the {:?} task's data", cfg.task),
    })?;
    check_target(opts.target, task.reports_bpc())?;
    Ok(task)
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

/// The run folder this process trains into: rank 0 (`is_main`) locks a resumed one, or
/// creates a new one at `--out` (default `default_out`); the other ranks only read it.
pub fn run_folder(resumed: Option<RunDir>, opts: &TrainArgs, cfg: &RunConfig, is_main: bool) -> Result<RunDir> {
    let out = opts.out.clone().unwrap_or_else(|| default_out(cfg.task));
    match resumed {
        Some(mut run_dir) => {
            if is_main {
                run_dir.lock_for_writing()?;
            }
            Ok(run_dir)
        }
        None if is_main => RunDir::create(&out, cfg),
        None => Ok(RunDir::unwritten(&out)),
    }
}

/// `checkpoints/<task>-<unix seconds>-<pid>`.
fn default_out(task: TaskKind) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let name = format!("{:?}", task).to_lowercase();
    // The process id keeps two runs started in the same second apart.
    PathBuf::from("checkpoints").join(format!("{name}-{secs}-{}", std::process::id()))
}
