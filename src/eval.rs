//! `reformer eval`: score a checkpoint on held-out data without training, optionally with
//! the hashing changed at evaluation time (paper Table 2: trained with k rounds, evaluated
//! with j) or with LSH layers evaluated as dense shared-QK attention.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::arg_values::at_least_one;
use crate::device::RunArgs;
use crate::hash_rounds_sweep;
use crate::memory_plan::{self, parse_budget, MemoryBudget};
use crate::model::attention::window_rule::WindowRule;
use crate::model::attention::Attention;
use crate::model::ReformerLm;
use crate::precision::Precision;
use crate::progress::Progress;
use crate::run_config::RunConfig;
use crate::run_dir::load_model;
use crate::score::{Figure, Score, ScoreTotals};
use crate::tasks::{Batch, Split, Task, TaskKind};

/// What LSH layers compute at evaluation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalAttention {
    /// As trained (with `--n-hashes` rounds when given).
    Lsh,
    /// Dense attention with the same shared query/key and self-mask: LSH with one round
    /// and one chunk covering the whole window.
    Full,
    /// The strict causal rule (what `generate`'s decoding cache computes for LSH
    /// layers), with `--n-hashes` rounds when given.
    Strict,
}

/// Score a checkpoint on held-out data, optionally with other hash rounds (Table 2).
#[derive(clap::Args, Clone, Debug)]
pub struct EvalArgs {
    /// A run folder (its best checkpoint is used) or one checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The task (default: the run's).
    #[arg(long, value_enum)]
    pub task: Option<TaskKind>,
    /// Data file (default: the run's).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Which part of the data, in non-overlapping windows (default: the task's scoring
    /// split: test for enwik8 and text, valid for duplication).
    #[arg(long, value_enum)]
    pub split: Option<Split>,
    /// At most this many bytes (tokens) of the split.
    #[arg(long, default_value_t = 1_000_000)]
    pub eval_bytes: usize,
    /// Window length (at most the model's max_seq_len; default: the run's).
    #[arg(long)]
    pub seq_len: Option<i64>,
    /// Windows per batch (default: the run's).
    #[arg(long, value_parser = at_least_one::<i64>)]
    pub batch_size: Option<i64>,
    /// Hash rounds of the LSH layers, one evaluation each: --n-hashes 1,2,4,8.
    #[arg(long, value_delimiter = ',', value_parser = at_least_one::<i64>)]
    pub n_hashes: Vec<i64>,
    /// lsh (as trained); full: LSH layers as dense shared-QK attention; strict: LSH
    /// layers under the strict causal rule (what generate's cache computes).
    #[arg(long, value_enum, default_value = "lsh")]
    pub attention: EvalAttention,
    /// Arithmetic of the forward passes: f32, or bf16 / f16 autocast (default: the run's
    /// train.precision).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Score exactly the validation windows the training run logged (instead of a --split).
    #[arg(long, conflicts_with = "split")]
    pub training_windows: bool,
    /// Fit the scoring in this much memory (8GiB, 512MiB, 8G, or auto): the planner
    /// picks the windows per forward pass and the loss chunks (the scores do not change)
    /// and prints the plan, as `train --memory-budget` does.
    #[arg(long, value_name = "SIZE", value_parser = parse_budget)]
    pub memory_budget: Option<MemoryBudget>,
    /// Print one JSON object with every figure and the settings used.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// One evaluation (one `--n-hashes` value): a row of `eval --json`'s `results`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalResult {
    /// Hash rounds of the LSH layers (null when they ran as dense attention).
    pub n_hashes: Option<i64>,
    #[serde(flatten)]
    pub score: Score,
    pub tokens_per_sec: f64,
}

/// What `eval --json` prints: the settings used and one row per evaluation.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub checkpoint: PathBuf,
    pub task: TaskKind,
    pub split: ScoredWindows,
    pub seq_len: i64,
    pub batch_size: i64,
    pub attention: EvalAttention,
    pub trained_n_hashes: i64,
    pub precision: Precision,
    pub results: Vec<EvalResult>,
}

/// Which windows are scored: a split of the data, or exactly the validation windows the
/// training run logged (`--training-windows`, written "training-validation").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoredWindows {
    Split(Split),
    TrainingValidation,
}

impl Serialize for ScoredWindows {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Split(split) => split.serialize(serializer),
            Self::TrainingValidation => serializer.serialize_str("training-validation"),
        }
    }
}

impl ScoredWindows {
    fn describe(self) -> String {
        match self {
            Self::Split(split) => format!("the {split:?} split"),
            Self::TrainingValidation => "the training run's validation windows".into(),
        }
    }
}

fn has_lsh(model: &ReformerLm) -> bool {
    model.blocks.iter().any(|b| matches!(b.attention, Attention::Lsh(_)))
}

/// Scores `batches` one at a time with a progress bar; tokens/s over the whole pass.
fn score(model: &ReformerLm, batches: &[Batch], device: Device, label: &str) -> (Score, f64) {
    let started = Instant::now();
    let mut progress = Progress::new(label, batches.len() as u64);
    let mut totals = ScoreTotals::default();
    for (i, batch) in batches.iter().enumerate() {
        totals += ScoreTotals::of(model, std::iter::once(batch), device);
        progress.update(i as u64 + 1, format!("{:.4} bits/byte", totals.score().bpc));
    }
    progress.finish();
    let tokens: i64 = batches.iter().map(Batch::n_tokens).sum();
    (totals.score(), tokens as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// The run's settings with `opts`' overrides (task, data, window length, batch size)
/// applied, each checked against the model.
fn apply_overrides(opts: &EvalArgs, cfg: &mut RunConfig) -> Result<()> {
    if let Some(task) = opts.task {
        cfg.task = task;
    }
    if opts.data.is_some() {
        cfg.data = opts.data.clone();
    }
    if let Some(seq_len) = opts.seq_len {
        if cfg.task == TaskKind::Duplication {
            bail!("--seq-len does not apply to the duplication task: its length is 2·copy_len + 1");
        }
        if seq_len < 1 || seq_len > cfg.model.max_seq_len {
            bail!("--seq-len {seq_len} is beyond the model's positional range 1..={}", cfg.model.max_seq_len);
        }
        cfg.train.seq_len = seq_len;
    }
    if let Some(batch_size) = opts.batch_size {
        cfg.train.batch_size = batch_size;
    }
    Ok(())
}

/// The hash rounds of each evaluation: `None` for dense attention.
fn round_settings(opts: &EvalArgs, trained_rounds: i64) -> Vec<Option<i64>> {
    match opts.attention {
        EvalAttention::Full => vec![None],
        EvalAttention::Lsh | EvalAttention::Strict if opts.n_hashes.is_empty() => vec![Some(trained_rounds)],
        EvalAttention::Lsh | EvalAttention::Strict => opts.n_hashes.iter().map(|&j| Some(j)).collect(),
    }
}

/// The batches `opts` asks for, refused when they hold not one window.
fn scored_batches(opts: &EvalArgs, cfg: &RunConfig, task: &dyn Task) -> Result<(ScoredWindows, Vec<Batch>)> {
    let (windows, batches) = if opts.training_windows {
        (ScoredWindows::TrainingValidation, task.valid_batches(cfg.train.batch_size, cfg.train.eval_batches))
    } else {
        let split = opts.split.unwrap_or_else(|| task.scoring_split());
        (ScoredWindows::Split(split), task.split_batches(split, cfg.train.batch_size, opts.eval_bytes)?)
    };
    if batches.is_empty() {
        bail!(
            "{} {} fewer than one window of {} tokens (+1 for the last target): score a longer text, or --split all for the whole file",
            windows.describe(),
            if windows == ScoredWindows::TrainingValidation { "hold" } else { "holds" },
            task.seq_len()
        );
    }
    Ok((windows, batches))
}

pub fn run(opts: EvalArgs) -> Result<()> {
    let device = opts.run.setup()?;
    let (_vs, mut model, mut cfg) = load_model(&opts.checkpoint, device)?;
    let trained_rounds = cfg.model.lsh.n_hashes;
    let precision = opts.precision.unwrap_or(cfg.train.precision).resolve(device);
    apply_overrides(&opts, &mut cfg)?;
    if (!opts.n_hashes.is_empty() || opts.attention != EvalAttention::Lsh) && !has_lsh(&model) {
        bail!("this model has no LSH layers: --n-hashes and --attention full|strict change nothing");
    }
    if opts.attention == EvalAttention::Strict {
        crate::model::decoding::check_decodable(&cfg.model)?;
        model.set_window_rule(WindowRule::Strict)?;
    }
    let task = cfg.build_task()?;
    let (windows, batches) = scored_batches(&opts, &cfg, task.as_ref())?;
    eprintln!(
        "evaluating {:?} on {} with seq_len {}, batch size {}, LSH layers as {:?}, in {}",
        cfg.task,
        windows.describe(),
        task.seq_len(),
        cfg.train.batch_size,
        opts.attention,
        precision.name()
    );
    let figure = Figure::of(cfg.task);
    let settings = round_settings(&opts, trained_rounds);
    if let Some(budget) = opts.memory_budget {
        let most_rounds = settings.iter().map(|rounds| rounds.unwrap_or(1)).max().unwrap_or(trained_rounds);
        let rows = cfg.train.batch_size;
        let record = memory_plan::apply(&mut cfg, budget, device, 0, rows, most_rounds)?;
        eprintln!("{}", record.line());
        model.cfg.execution = cfg.model.execution.clone();
    }
    let results = hash_rounds_sweep::sweep(&mut model, &settings, task.seq_len(), |model, rounds| {
        let label = match rounds {
            Some(j) => format!("eval ({j} rounds)"),
            None => "eval (dense)".to_string(),
        };
        let (score, tokens_per_sec) = precision.autocast(device, || score(model, &batches, device, &label))?;
        eprintln!("{label}: {}, {} targets, {tokens_per_sec:.0} tokens/s", score.describe(figure), score.n_targets);
        Ok(EvalResult { n_hashes: rounds, score, tokens_per_sec })
    })?;
    if results.len() > 1 {
        let row: Vec<String> = results
            .iter()
            .map(|r| {
                format!("{}: {:.2}", r.n_hashes.expect("several settings are hash rounds"), figure.value(&r.score))
            })
            .collect();
        eprintln!("trained with {trained_rounds} rounds, evaluated with  {}", row.join("  "));
    }
    if opts.json {
        let report = EvalReport {
            checkpoint: opts.checkpoint.clone(),
            task: cfg.task,
            split: windows,
            seq_len: task.seq_len(),
            batch_size: cfg.train.batch_size,
            attention: opts.attention,
            trained_n_hashes: trained_rounds,
            precision,
            results,
        };
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
