//! `--memory-budget`: the budget as the user gives it (`budget`), a step-time model
//! beside the memory model (`step_time`), and the planner that picks the execution
//! settings of a run to fit the budget (`planner`).

pub mod budget;
pub mod planner;
pub mod step_time;

use anyhow::{Context, Result};
use tch::Device;

pub use self::budget::{parse_budget, MemoryBudget};
pub use self::planner::{Plan, PlanRecord, Workload};
use crate::model::ModelConfig;
use crate::precision::Precision;
use crate::run_config::RunConfig;

/// Plans `cfg`'s execution settings for `budget` on `device` (per process: each worker
/// of a data-parallel run holds its own copy of the model and its share of the batch),
/// sets them, and returns the record that `config.json` keeps. `train_rows` is the
/// sequences per training micro-batch (0: no training), `scoring_rows` per scoring batch,
/// `scoring_hashes` the most hash rounds a scoring pass uses.
pub fn apply(
    cfg: &mut RunConfig,
    budget: MemoryBudget,
    device: Device,
    train_rows: i64,
    scoring_rows: i64,
    scoring_hashes: i64,
) -> Result<PlanRecord> {
    let resolved = budget.resolve(device)?;
    let workload = Workload {
        train_rows,
        scoring_rows: scoring_rows.max(1),
        seq_len: cfg.training_len(),
        scoring_hashes,
        precision: cfg.train.precision.resolve(device),
    };
    let plan = planner::plan(&cfg.model, workload, device, resolved.model_bytes())
        .with_context(|| format!("--memory-budget {budget}"))?;
    cfg.model.execution = plan.execution.clone();
    Ok(PlanRecord {
        budget: budget.to_string(),
        budget_bytes: resolved.total,
        process_bytes: resolved.process,
        predicted_peak_bytes: resolved.process + plan.peak.total(),
        predicted_step_secs: (train_rows > 0).then_some(plan.step_secs),
        plan: planner::describe(&plan.execution, workload),
    })
}

impl PlanRecord {
    /// The plan in one line, as `train`, `eval` and `bench` print it.
    pub fn line(&self) -> String {
        let step = self.predicted_step_secs.map(|secs| format!(", a step ≈ {secs:.2} s")).unwrap_or_default();
        format!(
            "memory plan for {}: {}; predicted peak {}{step}",
            budget::format_bytes(self.budget_bytes),
            self.plan,
            budget::format_bytes(self.predicted_peak_bytes),
        )
    }
}

/// `generate --memory-budget`: one sequence of `seq_len` tokens at a time leaves nothing
/// to choose, so the budget is checked against the predicted peak of scoring it (the
/// prompt's forward pass) and the line to print is returned; a budget it exceeds is one
/// line.
pub fn check_one_sequence(
    cfg: &ModelConfig,
    budget: MemoryBudget,
    device: Device,
    seq_len: i64,
    precision: Precision,
) -> Result<String> {
    let resolved = budget.resolve(device)?;
    let workload = Workload { train_rows: 0, scoring_rows: 1, seq_len, scoring_hashes: cfg.lsh.n_hashes, precision };
    let peak = planner::evaluate(cfg, cfg.execution.clone(), workload, device).peak.total();
    let predicted = resolved.process + peak;
    if peak > resolved.model_bytes() * (1.0 - planner::RESERVE) {
        anyhow::bail!(
            "--memory-budget {budget}: one sequence of {seq_len} tokens is predicted to peak at {} with this model: give a larger budget or a shorter prompt",
            budget::format_bytes(predicted)
        );
    }
    Ok(format!(
        "memory check for {}: one sequence of {seq_len} tokens at a time, predicted peak {}",
        budget::format_bytes(resolved.total),
        budget::format_bytes(predicted)
    ))
}
