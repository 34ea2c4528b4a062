//! `reformer eval`: score a checkpoint on held-out data without training, optionally with
//! the hashing changed at evaluation time (paper Table 2: trained with k rounds, evaluated
//! with j) or with LSH layers evaluated as dense shared-QK attention.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;
use tch::Device;

use crate::arg_values::at_least_one;
use crate::device::RunArgs;
use crate::hash_rounds_sweep;
use crate::model::attention::Attention;
use crate::model::ReformerLm;
use crate::precision::Precision;
use crate::progress::Progress;
use crate::run_dir::load_model;
use crate::score::{evaluate, Score};
use crate::tasks::{Batch, Split, TaskKind};

/// What LSH layers compute at evaluation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
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
    /// Print one JSON object with every figure and the settings used.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

fn has_lsh(model: &ReformerLm) -> bool {
    model.blocks.iter().any(|b| matches!(b.attention, Attention::Lsh(_)))
}

/// Scores `batches` one at a time with a progress bar; tokens/s over the whole pass.
fn score(model: &ReformerLm, batches: &[Batch], device: Device, label: &str) -> (Score, f64) {
    let started = Instant::now();
    let mut progress = Progress::new(label, batches.len() as u64);
    let (mut nll, mut correct, mut n) = (0.0, 0.0, 0.0);
    for (i, batch) in batches.iter().enumerate() {
        let s = evaluate(model, std::slice::from_ref(batch), device);
        nll += s.loss * s.n_targets;
        correct += s.accuracy * s.n_targets;
        n += s.n_targets;
        progress.update(i as u64 + 1, format!("{:.4} bits/byte", nll / n.max(1.0) / std::f64::consts::LN_2));
    }
    progress.finish();
    let tokens: i64 = batches.iter().map(Batch::n_tokens).sum();
    let loss = nll / n.max(1.0);
    let score = Score { loss, bpc: loss / std::f64::consts::LN_2, accuracy: correct / n.max(1.0), n_targets: n };
    (score, tokens as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

pub fn run(opts: EvalArgs) -> Result<()> {
    let device = opts.run.setup()?;
    let (_vs, mut model, mut cfg) = load_model(&opts.checkpoint, device)?;
    let trained_rounds = cfg.model.lsh.n_hashes;
    let precision = opts.precision.unwrap_or(cfg.train.precision);
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
    if (!opts.n_hashes.is_empty() || opts.attention != EvalAttention::Lsh) && !has_lsh(&model) {
        bail!("this model has no LSH layers: --n-hashes and --attention full|strict change nothing");
    }
    if opts.attention == EvalAttention::Strict {
        crate::model::decoding::check_decodable(&cfg.model)?;
        model.set_strict_causal(true)?;
    }
    let task = cfg.build_task()?;
    let split = opts.split.unwrap_or_else(|| task.scoring_split());
    let batches = if opts.training_windows {
        task.valid_batches(cfg.train.batch_size, cfg.train.eval_batches)
    } else {
        task.split_batches(split, cfg.train.batch_size, opts.eval_bytes)?
    };
    if batches.is_empty() {
        bail!(
            "the {split:?} split holds fewer than one window of {} tokens (+1 for the last target): score a longer text, or --split all for the whole file",
            task.seq_len()
        );
    }
    eprintln!(
        "evaluating {:?} ({}) with seq_len {}, batch size {}, LSH layers as {:?}, in {}",
        cfg.task,
        if opts.training_windows {
            "the training run's validation windows".to_string()
        } else {
            format!("{split:?} split")
        },
        task.seq_len(),
        cfg.train.batch_size,
        opts.attention,
        precision.name()
    );

    let settings: Vec<Option<i64>> = match opts.attention {
        EvalAttention::Full => vec![None],
        EvalAttention::Lsh | EvalAttention::Strict if opts.n_hashes.is_empty() => vec![Some(trained_rounds)],
        EvalAttention::Lsh | EvalAttention::Strict => opts.n_hashes.iter().map(|&j| Some(j)).collect(),
    };
    let mut results = Vec::new();
    hash_rounds_sweep::sweep(&mut model, &settings, task.seq_len(), |model, rounds| {
        let label = match rounds {
            Some(j) => format!("eval ({j} rounds)"),
            None => "eval (dense)".to_string(),
        };
        let (s, tokens_per_sec) = precision.autocast(device, || score(model, &batches, device, &label))?;
        results.push(json!({"n_hashes": rounds, "loss": s.loss, "bpc": s.bpc, "accuracy": s.accuracy,
            "n_targets": s.n_targets, "tokens_per_sec": tokens_per_sec}));
        let figure = if task.reports_bpc() {
            format!("{:.4} bits per byte", s.bpc)
        } else {
            format!("second-copy accuracy {:.2}%", 100.0 * s.accuracy)
        };
        eprintln!("{label}: loss {:.4}, {figure}, {} targets, {tokens_per_sec:.0} tokens/s", s.loss, s.n_targets);
        Ok(())
    })?;
    if settings.len() > 1 {
        let row: Vec<String> = results
            .iter()
            .map(|r| {
                let figure = if task.reports_bpc() {
                    r["bpc"].as_f64().unwrap_or(f64::NAN)
                } else {
                    100.0 * r["accuracy"].as_f64().unwrap_or(f64::NAN)
                };
                format!("{}: {figure:.2}", r["n_hashes"])
            })
            .collect();
        eprintln!("trained with {trained_rounds} rounds, evaluated with  {}", row.join("  "));
    }
    if opts.json {
        println!(
            "{}",
            json!({
                "checkpoint": opts.checkpoint.display().to_string(), "task": cfg.task,
                "split": if opts.training_windows { json!("training-validation") } else { json!(split) },
                "seq_len": task.seq_len(), "batch_size": cfg.train.batch_size, "attention": opts.attention,
                "trained_n_hashes": trained_rounds, "precision": precision, "results": results,
            })
        );
    }
    Ok(())
}
