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
        let workload = Workload {
            train_rows: batch,
            scoring_rows: batch,
            seq_len,
            scoring_hashes: cfg.model.lsh.n_hashes,
            precision: cfg.train.precision,
        };
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
        let planned = crate::model::config::ExecutionConfig { scoring_rows: None, ..chosen.execution };
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

/// After the table: per length, the planned step's whole-process peak against the
/// budget, and with the other candidates measured, the fastest of those that stayed
/// under it and the planned step's time as a multiple of it.
pub fn print_summary(rows: &[CaseRow], name: &str, budget_bytes: f64) {
    let planned_label = format!("{name}-plan");
    let fits = |row: &CaseRow| row.status == Status::Ok && (row.measured.process_peak_bytes as f64) <= budget_bytes;
    for planned in rows.iter().filter(|row| row.label == planned_label) {
        let same_length: Vec<&CaseRow> = rows.iter().filter(|row| row.seq_len == planned.seq_len).collect();
        let verdict = if fits(planned) { "under" } else { "OVER" };
        let mut line = format!(
            "T={}: planned step {:.1} ms, whole process peak {} ({verdict} the budget of {})",
            planned.seq_len,
            planned.measured.ms_per_step,
            format_bytes(planned.measured.process_peak_bytes as f64),
            format_bytes(budget_bytes)
        );
        if let Some(fastest) = same_length
            .iter()
            .filter(|row| fits(row))
            .min_by(|a, b| a.measured.ms_per_step.total_cmp(&b.measured.ms_per_step))
        {
            if same_length.len() > 1 {
                line += &format!(
                    "; fastest of {} measured under it: {} at {:.1} ms (planned {:.2}×)",
                    same_length.iter().filter(|row| fits(row)).count(),
                    fastest.label,
                    fastest.measured.ms_per_step,
                    planned.measured.ms_per_step / fastest.measured.ms_per_step
                );
            }
        }
        println!("{line}");
    }
}
