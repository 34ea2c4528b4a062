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
    let model_bytes = budget.model_bytes(device)?;
    let total = budget.total_bytes(device)?;
    let workload = Workload {
        train_rows,
        scoring_rows: scoring_rows.max(1),
        seq_len: cfg.training_len(),
        scoring_hashes,
        precision: cfg.train.precision,
    };
    let plan = planner::plan(&cfg.model, workload, device, model_bytes)
        .with_context(|| format!("--memory-budget {budget}"))?;
    cfg.model.execution = plan.execution.clone();
    Ok(PlanRecord {
        budget: budget.to_string(),
        budget_bytes: total,
        process_bytes: total - model_bytes,
        predicted_peak_bytes: total - model_bytes + plan.peak.total(),
        predicted_step_secs: plan.step_secs,
        plan: planner::describe(&plan.execution, workload),
    })
}

impl PlanRecord {
    /// The plan in one line, as `train`, `eval` and `bench` print it.
    pub fn line(&self) -> String {
        format!(
            "memory plan for {}: {}; predicted peak {} (step ≈ {:.2} s)",
            budget::format_bytes(self.budget_bytes),
            self.plan,
            budget::format_bytes(self.predicted_peak_bytes),
            self.predicted_step_secs
        )
    }
}
