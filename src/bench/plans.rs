//! `reformer bench --preset P --memory-budget SIZE`: the planner's choice for the preset's
//! training step at each length, measured; with `--all-plans` beside every other
//! combination of the execution settings, so that the planned step can be compared with
//! the fastest one that measures under the budget, side by side in one sitting.

use anyhow::Result;
use tch::Device;

use super::case::Case;
use super::report::{CaseRow, Status};
use crate::memory_plan::budget::format_bytes;
use crate::memory_plan::planner::{self, Workload};
use crate::memory_plan::MemoryBudget;
use crate::model::config::ExecutionConfig;
use crate::run_config::RunConfig;

/// The planned case of `cfg` (named `name`) at each of `lengths` under `budget`, labelled
/// `<name>-plan`, and with `all_plans` every other candidate (scoring settings aside: a
/// bench step scores nothing), labelled by its settings.
pub fn plan_cases(
    name: &str,
    cfg: &RunConfig,
    lengths: &[i64],
    steps: usize,
    budget: MemoryBudget,
    device: Device,
    all_plans: bool,
) -> Result<Vec<Case>> {
    let model_bytes = budget.model_bytes(device)?;
    let batch = cfg.train.batch_size;
    let mut cases = Vec::new();
    for &seq_len in lengths {
        let workload = workload(cfg, seq_len);
        let chosen = planner::plan(&cfg.model, workload, device, model_bytes)?;
        eprintln!("plan at T={seq_len}: {}", planner::describe(&chosen.execution, workload));
        // Compared side by side, each step is timed after a warm-up; alone, the planned
        // step (of a long preset, perhaps minutes) is timed from the first.
        let step = |label: String, execution| {
            let model = crate::model::ModelConfig { execution, ..cfg.model.clone() };
            let case = Case::step("plan", label, model, batch, seq_len, steps);
            if all_plans {
                case
            } else {
                case.without_warmup()
            }
        };
        let planned = ExecutionConfig { scoring_rows: None, ..chosen.execution };
        cases.push(step(format!("{name}-plan"), planned.clone()));
        if all_plans {
            let others = planner::candidates(&cfg.model, workload)
                .into_iter()
                .filter(|e| e.scoring_rows.is_none() && *e != planned);
            cases.extend(others.map(|execution| step(planner::short(&execution), execution)));
        }
    }
    Ok(cases)
}

/// After the table, per length: the planned step's time and whole-process peak against
/// the budget. With every plan measured, the same at 1.1, 1.5 and 3 times the smallest
/// predicted peak too: the plan the planner makes for that budget, beside the fastest
/// measured step that stayed under it, and the planned time as a multiple of it.
pub fn print_summary(
    rows: &[CaseRow],
    name: &str,
    cfg: &RunConfig,
    budget: MemoryBudget,
    device: Device,
) -> Result<()> {
    let budget_bytes = budget.total_bytes(device)?;
    let process = budget_bytes - budget.model_bytes(device)?;
    let fits =
        |row: &CaseRow, bytes: f64| row.status == Status::Ok && (row.measured.process_peak_bytes as f64) <= bytes;
    let lengths: Vec<i64> =
        rows.iter().filter(|row| row.label == format!("{name}-plan")).map(|row| row.seq_len).collect();
    for seq_len in lengths {
        let same_length: Vec<&CaseRow> = rows.iter().filter(|row| row.seq_len == seq_len).collect();
        let workload = workload(cfg, seq_len);
        let chosen = |bytes: f64| planner::plan(&cfg.model, workload, device, bytes - process);
        let planned_label = short(&chosen(budget_bytes)?.execution);
        let label_of =
            |row: &CaseRow| if row.label == format!("{name}-plan") { planned_label.clone() } else { row.label.clone() };
        let mut budgets = vec![budget_bytes];
        if same_length.len() > 1 {
            let smallest = planner::candidates(&cfg.model, workload)
                .into_iter()
                .map(|e| planner::evaluate(&cfg.model, e, workload, device).peak.total())
                .fold(f64::INFINITY, f64::min);
            let reachable = process + smallest / (1.0 - planner::RESERVE);
            budgets.extend([1.1, 1.5, 3.0].map(|factor| factor * reachable));
        }
        for bytes in budgets {
            let Ok(plan) = chosen(bytes) else { continue };
            let label = short(&plan.execution);
            let Some(planned) = same_length.iter().find(|row| label_of(row) == label) else { continue };
            let verdict = if fits(planned, bytes) { "under" } else { "OVER" };
            let mut line = format!(
                "T={seq_len}, budget {}: plan {label}, {:.1} ms (predicted {:.1}), whole process peak {} ({verdict})",
                format_bytes(bytes),
                planned.measured.ms_per_step,
                planned.predicted_ms.unwrap_or(f64::NAN),
                format_bytes(planned.measured.process_peak_bytes as f64),
            );
            let fitting: Vec<&&CaseRow> = same_length.iter().filter(|row| fits(row, bytes)).collect();
            if let Some(fastest) =
                fitting.iter().min_by(|a, b| a.measured.ms_per_step.total_cmp(&b.measured.ms_per_step))
            {
                if same_length.len() > 1 {
                    line += &format!(
                        "; fastest of {} measured under it: {} at {:.1} ms (plan {:.2}×)",
                        fitting.len(),
                        label_of(fastest),
                        fastest.measured.ms_per_step,
                        planned.measured.ms_per_step / fastest.measured.ms_per_step
                    );
                }
            }
            println!("{line}");
        }
    }
    Ok(())
}

/// A bench step of `cfg`'s model at `seq_len`: its training batch, scoring the same.
fn workload(cfg: &RunConfig, seq_len: i64) -> Workload {
    let batch = cfg.train.batch_size;
    Workload {
        train_rows: batch,
        scoring_rows: batch,
        seq_len,
        scoring_hashes: cfg.model.lsh.n_hashes,
        precision: cfg.train.precision,
    }
}

/// `planner::short` of a bench step's settings (scoring aside).
fn short(execution: &ExecutionConfig) -> String {
    planner::short(&ExecutionConfig { scoring_rows: None, ..execution.clone() })
}
