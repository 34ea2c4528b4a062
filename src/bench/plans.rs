//! `reformer bench --preset P --memory-budget SIZE`: the planner's choice for the preset's
//! training step at each length, measured, and whether the whole process stayed under
//! the budget. With `--all-plans` every combination of the execution settings is
//! measured side by side in one sitting, and the planner's choice at the budget (and at
//! 1.1, 1.5 and 3 times the smallest peak it predicts) is set beside the fastest step
//! that measured under the same budget.

use anyhow::Result;
use tch::Device;

use super::case::Case;
use super::report::{CaseRow, Status};
use crate::memory_plan::budget::format_bytes;
use crate::memory_plan::planner::{self, Workload};
use crate::memory_plan::MemoryBudget;
use crate::model::config::ExecutionConfig;
use crate::model::ModelConfig;
use crate::run_config::RunConfig;

/// The planned case of `cfg` (named `name`) at each of `lengths` under `budget`, labelled
/// `<name>-plan`; with `all_plans` instead every candidate (scoring settings aside: a
/// bench step scores nothing), each labelled by its settings (`planner::short`) and
/// timed after a warm-up.
pub fn plan_cases(
    name: &str,
    cfg: &RunConfig,
    lengths: &[i64],
    steps: usize,
    budget: MemoryBudget,
    device: Device,
    all_plans: bool,
) -> Result<Vec<Case>> {
    let model_bytes = budget.resolve(device)?.model_bytes();
    let batch = cfg.train.batch_size;
    let step = |label: String, execution, seq_len| {
        let model = ModelConfig { execution, ..cfg.model.clone() };
        Case::step("plan", label, model, batch, seq_len, steps)
    };
    let mut cases = Vec::new();
    for &seq_len in lengths {
        let workload = workload(cfg, seq_len, device);
        let chosen = planner::plan(&cfg.model, workload, device, model_bytes)?;
        eprintln!("plan at T={seq_len}: {}", planner::describe(&chosen.execution, workload));
        if all_plans {
            let every = planner::candidates(&cfg.model, workload).into_iter().filter(|e| e.scoring_rows.is_none());
            cases.extend(every.map(|execution| step(planner::short(&execution), execution, seq_len)));
        } else {
            // Alone, the planned step (of a long preset, perhaps minutes) is timed from the first.
            let planned = ExecutionConfig { scoring_rows: None, ..chosen.execution };
            cases.push(step(format!("{name}-plan"), planned, seq_len).without_warmup());
        }
    }
    Ok(cases)
}

/// After the table, per length: the planned step's time and whole-process peak against
/// the budget; with every plan measured (`plan_cases`' `all_plans`), the same at 1.1, 1.5
/// and 3 times the smallest peak the planner predicts, each beside the fastest measured
/// step that stayed under that budget.
pub fn print_summary(
    rows: &[CaseRow],
    name: &str,
    cfg: &RunConfig,
    budget: MemoryBudget,
    device: Device,
) -> Result<()> {
    let budget_bytes = budget.total_bytes(device)?;
    let fits =
        |row: &CaseRow, bytes: f64| row.status == Status::Ok && (row.measured.process_peak_bytes as f64) <= bytes;
    let planned_label = format!("{name}-plan");
    if rows.iter().any(|row| row.label == planned_label) {
        for row in rows.iter().filter(|row| row.label == planned_label) {
            let verdict = if fits(row, budget_bytes) { "under" } else { "OVER" };
            println!(
                "T={}, budget {}: planned step {:.1} ms, whole process peak {} ({verdict})",
                row.seq_len,
                format_bytes(budget_bytes),
                row.measured.ms_per_step,
                format_bytes(row.measured.process_peak_bytes as f64)
            );
        }
        return Ok(());
    }
    // What each case's process held before its case (libtorch): the share of a budget
    // that is not the model's.
    let mut baselines: Vec<f64> = rows
        .iter()
        .filter(|row| row.status == Status::Ok)
        .map(|row| (row.measured.process_peak_bytes - row.measured.peak_bytes) as f64)
        .collect();
    baselines.sort_by(f64::total_cmp);
    let Some(&process) = baselines.get(baselines.len() / 2) else { return Ok(()) };
    let mut lengths: Vec<i64> = rows.iter().map(|row| row.seq_len).collect();
    lengths.dedup();
    for seq_len in lengths {
        let same_length: Vec<&CaseRow> = rows.iter().filter(|row| row.seq_len == seq_len).collect();
        let workload = workload(cfg, seq_len, device);
        let smallest = planner::candidates(&cfg.model, workload)
            .into_iter()
            .map(|e| planner::evaluate(&cfg.model, e, workload, device).peak.total())
            .fold(f64::INFINITY, f64::min);
        let reachable = process + smallest / (1.0 - planner::RESERVE);
        let budgets = [budget_bytes, 1.1 * reachable, 1.5 * reachable, 3.0 * reachable];
        for bytes in budgets {
            let Ok(plan) = planner::plan(&cfg.model, workload, device, bytes - process) else { continue };
            let label = planner::short(&plan.execution);
            let Some(planned) = same_length.iter().find(|row| row.label == label) else { continue };
            let verdict = if fits(planned, bytes) { "under" } else { "OVER" };
            let mut line = format!(
                "T={seq_len}, budget {}: plan {label}, {:.1} ms (predicted {:.1}), whole process peak {} ({verdict})",
                format_bytes(bytes),
                planned.measured.ms_per_step,
                planned.predicted_ms.unwrap_or(f64::NAN),
                format_bytes(planned.measured.process_peak_bytes as f64),
            );
            let fitting: Vec<&&CaseRow> = same_length.iter().filter(|row| fits(row, bytes)).collect();
            let fastest = fitting.iter().min_by(|a, b| a.measured.ms_per_step.total_cmp(&b.measured.ms_per_step));
            if let Some(fastest) = fastest {
                line += &format!(
                    "; fastest of {} measured under it: {} at {:.1} ms (plan {:.2}×)",
                    fitting.len(),
                    fastest.label,
                    fastest.measured.ms_per_step,
                    planned.measured.ms_per_step / fastest.measured.ms_per_step
                );
            }
            println!("{line}");
        }
    }
    Ok(())
}

/// A bench step of `cfg`'s model at `seq_len` on `device`: its training batch, scoring
/// the same, in the precision the run would use there.
fn workload(cfg: &RunConfig, seq_len: i64, device: Device) -> Workload {
    let batch = cfg.train.batch_size;
    Workload {
        train_rows: batch,
        scoring_rows: batch,
        seq_len,
        scoring_hashes: cfg.model.lsh.n_hashes,
        precision: cfg.train.precision.resolve(device),
    }
}
