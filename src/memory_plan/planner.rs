//! The memory planner: among the ways of computing the same training step (and the same
//! scores), the fastest whose predicted peak fits a budget. It chooses only execution
//! settings (`model.execution`, none of which changes the result beyond float32
//! rounding) and never a model or optimizer setting.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Device;

use super::budget::format_bytes;
use super::step_time::StepTimeModel;
use crate::bench::case::Case;
use crate::bench::memory_model::{breakdown, scoring_breakdown, MemoryBreakdown};
use crate::model::config::ExecutionConfig;
use crate::model::{AttentionKind, ModelConfig};
use crate::precision::Precision;

/// What a run computes, in the shapes that decide its memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Workload {
    /// Sequences per training micro-batch (`train.batch_size`); 0: no training (scoring only).
    pub train_rows: i64,
    /// Sequences per scoring batch.
    pub scoring_rows: i64,
    /// Tokens per sequence.
    pub seq_len: i64,
    /// The most LSH hash rounds a scoring pass uses (a sweep over rounds, as the
    /// duplication task's Table-2 row, scores with more than the model trains with).
    pub scoring_hashes: i64,
    pub precision: Precision,
}

impl Workload {
    fn trains(&self) -> bool {
        self.train_rows > 0
    }
}

/// A chosen way of computing a workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub execution: ExecutionConfig,
    /// The predicted peak of the model's tensors (the larger of the training step's and
    /// the scoring's), term by term.
    pub peak: MemoryBreakdown,
    /// Predicted seconds per training step (per scoring batch without training).
    pub step_secs: f64,
}

/// A plan as `config.json` records it (`memory_plan`), beside the settings it chose.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRecord {
    /// The budget as given (`8GiB`, `auto`).
    pub budget: String,
    /// The budget in bytes when the plan was made.
    pub budget_bytes: f64,
    /// What the process held before the model (libtorch, the binary; on CUDA the
    /// context), measured when the plan was made.
    pub process_bytes: f64,
    /// The predicted peak of the whole process: `process_bytes` and the model's peak.
    pub predicted_peak_bytes: f64,
    /// The predicted seconds per training step (`memory_plan::step_time`); none for a
    /// plan that only scores.
    pub predicted_step_secs: Option<f64>,
    /// The plan in words.
    pub plan: String,
}

/// Feed-forward and loss chunk lengths tried (each only below the sequence length).
const CHUNK_LENS: [i64; 3] = [4096, 1024, 256];

/// The share of the budget left for the model that a plan leaves unused: the memory
/// model's largest error where it predicts low (−9% over 120 measured steps,
/// `docs/memory-plan-cpu.md`).
pub const RESERVE: f64 = 0.10;

/// The fastest plan for `workload` whose predicted peak is at most `model_bytes` (the
/// budget less what the process holds before the model: `Resolved::model_bytes`)
/// less `RESERVE`; when none fits, one line with the smallest peak reachable and its
/// largest term.
pub fn plan(cfg: &ModelConfig, workload: Workload, device: Device, model_bytes: f64) -> Result<Plan> {
    let usable = model_bytes * (1.0 - RESERVE);
    let plans: Vec<Plan> = candidates(cfg, workload).into_iter().map(|e| evaluate(cfg, e, workload, device)).collect();
    let fastest = plans.iter().filter(|p| p.peak.total() <= usable).min_by(|a, b| {
        a.step_secs.total_cmp(&b.step_secs).then(mechanisms(&a.execution).cmp(&mechanisms(&b.execution)))
    });
    if let Some(plan) = fastest {
        return Ok(plan.clone());
    }
    let smallest =
        plans.iter().min_by(|a, b| a.peak.total().total_cmp(&b.peak.total())).expect("one candidate at least");
    let (term, bytes) = smallest.peak.terms().into_iter().max_by(|a, b| a.1.total_cmp(&b.1)).expect("terms");
    let shrinks = match term {
        "parameters" | "gradients" | "optimizer state" => "a smaller model",
        "libtorch overhead" => "a larger budget",
        _ => "shorter sequences",
    };
    bail!(
        "nothing fits: the smallest predicted peak is {} for the model ({}) against {} left of the budget; its largest term is {term} ({}): it needs {shrinks}",
        format_bytes(smallest.peak.total()),
        describe(&smallest.execution, workload),
        format_bytes(usable.max(0.0)),
        format_bytes(bytes)
    )
}

/// `execution` predicted for `workload`: the larger peak of a training step and of the
/// scoring, and the step time.
pub fn evaluate(cfg: &ModelConfig, execution: ExecutionConfig, workload: Workload, device: Device) -> Plan {
    let model = ModelConfig { execution, ..cfg.clone() };
    let timing = StepTimeModel::for_device(device);
    let case = Case::step("plan", "plan", model.clone(), workload.train_rows.max(1), workload.seq_len, 1)
        .in_precision(workload.precision);
    let fused = case.lsh_path(device).starts_with("fused");
    let mut scored = model.clone();
    scored.lsh.n_hashes = scored.lsh.n_hashes.max(workload.scoring_hashes);
    let scoring = scoring_breakdown(&scored, workload.scoring_rows, workload.seq_len, fused, workload.trains());
    let (peak, step_secs) = if workload.trains() {
        let step = breakdown(&case, fused);
        let secs = timing.step_secs(&model, workload.train_rows, workload.seq_len);
        (if step.total() >= scoring.total() { step } else { scoring }, secs)
    } else {
        let scoring_model = ModelConfig {
            execution: ExecutionConfig { micro_batch_rows: model.execution.scoring_rows, ..model.execution.clone() },
            ..model.clone()
        };
        (scoring, timing.step_secs(&scoring_model, workload.scoring_rows, workload.seq_len) / 3.0)
    };
    Plan { execution: model.execution, peak, step_secs }
}

/// Every combination of the execution settings worth trying for `workload`: reversible
/// or not, sliced attention or not (with LSH or local layers), feed-forward and loss
/// chunks, rows per training pass (divisors of the batch) and rows per scoring pass;
/// without training only the loss chunks and the scoring rows. `fused_lsh` stays the
/// configuration's.
pub fn candidates(cfg: &ModelConfig, workload: Workload) -> Vec<ExecutionConfig> {
    let chunks: Vec<Option<i64>> =
        std::iter::once(None).chain(CHUNK_LENS.iter().filter(|&&c| c < workload.seq_len).map(|&c| Some(c))).collect();
    // Scoring keeps the built model's feed-forward chunks (only a training plan builds it).
    let ff_chunks = if workload.trains() { chunks.clone() } else { vec![cfg.execution.ff_chunk_len] };
    let slices = cfg.attention.iter().any(|&kind| kind != AttentionKind::Full);
    let (training, sliced): (&[bool], &[bool]) = match (workload.trains(), slices) {
        (true, true) => (&[false, true], &[false, true]),
        (true, false) => (&[false, true], &[false]),
        (false, _) => (&[false], &[false]),
    };
    let train_rows = if workload.trains() { row_choices(workload.train_rows) } else { vec![None] };
    let mut out = Vec::new();
    for &reversible in training {
        for &sliced_attention in sliced {
            for &ff_chunk_len in &ff_chunks {
                for &loss_chunk_len in &chunks {
                    for &micro_batch_rows in &train_rows {
                        for &scoring_rows in &row_choices(workload.scoring_rows) {
                            out.push(ExecutionConfig {
                                reversible: if workload.trains() { reversible } else { cfg.execution.reversible },
                                sliced_attention,
                                ff_chunk_len,
                                loss_chunk_len,
                                micro_batch_rows,
                                scoring_rows,
                                fused_lsh: cfg.execution.fused_lsh,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Rows per pass tried for a batch of `rows`: the whole batch (None), then each proper
/// divisor, largest first.
fn row_choices(rows: i64) -> Vec<Option<i64>> {
    std::iter::once(None).chain((1..rows).rev().filter(|d| rows % d == 0).map(Some)).collect()
}

/// How many memory-saving mechanisms `execution` uses: among plans of equal predicted
/// time the planner takes the one with fewest.
fn mechanisms(execution: &ExecutionConfig) -> usize {
    [
        execution.reversible,
        execution.sliced_attention,
        execution.ff_chunk_len.is_some(),
        execution.loss_chunk_len.is_some(),
        execution.micro_batch_rows.is_some(),
        execution.scoring_rows.is_some(),
    ]
    .iter()
    .filter(|&&on| on)
    .count()
}

/// A plan's settings in a few characters, for a bench label: `rev+sliced+ff256+loss1024+rows2`.
pub fn short(execution: &ExecutionConfig) -> String {
    let mut parts = vec![if execution.reversible { "rev".to_string() } else { "plain".into() }];
    if execution.sliced_attention {
        parts.push("sliced".into());
    }
    if let Some(len) = execution.ff_chunk_len {
        parts.push(format!("ff{len}"));
    }
    if let Some(len) = execution.loss_chunk_len {
        parts.push(format!("loss{len}"));
    }
    if let Some(rows) = execution.micro_batch_rows {
        parts.push(format!("rows{rows}"));
    }
    parts.join("+")
}

/// A plan's settings in words: "reversible, sliced attention, feed-forward 1024
/// positions at a time, …".
pub fn describe(execution: &ExecutionConfig, workload: Workload) -> String {
    let mut parts = Vec::new();
    if workload.trains() {
        parts.push(if execution.reversible { "reversible layers".into() } else { "ordinary residuals".to_string() });
    }
    if execution.sliced_attention {
        parts.push("sliced attention".into());
    }
    if let Some(len) = execution.ff_chunk_len {
        parts.push(format!("feed-forward {len} positions at a time"));
    }
    if let Some(len) = execution.loss_chunk_len {
        parts.push(format!("loss {len} positions at a time"));
    }
    if workload.trains() {
        let train_rows = workload.train_rows;
        parts.push(format!("{} of {train_rows} rows per pass", execution.pass_rows(train_rows)));
    }
    let scoring_rows = workload.scoring_rows;
    parts.push(format!("scoring {} of {scoring_rows} rows per pass", execution.scoring_pass_rows(scoring_rows)));
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LSH and local layers, 1,024 tokens, batches of 4: every mechanism saves memory.
    fn model() -> ModelConfig {
        let mut cfg = ModelConfig {
            vocab_size: 256,
            d_model: 64,
            n_layers: 4,
            n_heads: 2,
            d_ff: 512,
            max_seq_len: 1024,
            attention: vec![AttentionKind::Lsh, AttentionKind::Local],
            ..Default::default()
        };
        cfg.lsh.n_hashes = 4;
        cfg
    }

    fn workload() -> Workload {
        Workload { train_rows: 4, scoring_rows: 4, seq_len: 1024, scoring_hashes: 4, precision: Precision::F32 }
    }

    fn all_plans() -> Vec<Plan> {
        candidates(&model(), workload()).into_iter().map(|e| evaluate(&model(), e, workload(), Device::Cpu)).collect()
    }

    /// The budget (before the reserve) under which a plan of `peak` bytes just fits.
    fn budget_for(peak: f64) -> f64 {
        peak / (1.0 - RESERVE)
    }

    #[test]
    fn an_ample_budget_takes_the_plain_computation() {
        let plan = plan(&model(), workload(), Device::Cpu, 1e15).unwrap();
        let plain = ExecutionConfig { reversible: false, ..Default::default() };
        assert_eq!(plan.execution, plain);
    }

    #[test]
    fn the_plan_is_the_fastest_that_fits() {
        let plans = all_plans();
        let mut peaks: Vec<f64> = plans.iter().map(|p| p.peak.total()).collect();
        peaks.sort_by(f64::total_cmp);
        for peak in [peaks[0], peaks[peaks.len() / 4], peaks[peaks.len() / 2], peaks[peaks.len() - 1]] {
            let chosen = plan(&model(), workload(), Device::Cpu, budget_for(peak)).unwrap();
            assert!(chosen.peak.total() <= peak * (1.0 + 1e-12));
            let fastest_fitting =
                plans.iter().filter(|p| p.peak.total() <= peak).map(|p| p.step_secs).fold(f64::INFINITY, f64::min);
            assert_eq!(chosen.step_secs, fastest_fitting);
        }
    }

    #[test]
    fn a_budget_that_only_a_mechanism_meets_picks_it() {
        let plans = all_plans();
        // Feed-forward chunks are left out: the memory model credits them nothing (see
        // `memory_model::breakdown`), so no budget needs them.
        let mechanisms: [(&str, fn(&ExecutionConfig) -> bool); 5] = [
            ("reversible", |e| e.reversible),
            ("sliced attention", |e| e.sliced_attention),
            ("loss chunks", |e| e.loss_chunk_len.is_some()),
            ("micro-batches", |e| e.micro_batch_rows.is_some()),
            ("scoring rows", |e| e.scoring_rows.is_some()),
        ];
        for (name, uses) in mechanisms {
            let smallest_without =
                plans.iter().filter(|p| !uses(&p.execution)).map(|p| p.peak.total()).fold(f64::INFINITY, f64::min);
            let smallest = plans.iter().map(|p| p.peak.total()).fold(f64::INFINITY, f64::min);
            assert!(smallest < smallest_without, "{name} saves nothing in this model");
            let budget = budget_for((smallest + smallest_without) / 2.0);
            let chosen = plan(&model(), workload(), Device::Cpu, budget).unwrap();
            assert!(uses(&chosen.execution), "{name} not chosen: {:?}", chosen.execution);
        }
    }

    #[test]
    fn nothing_fits_is_one_line_with_the_smallest_peak_and_its_largest_term() {
        let err = plan(&model(), workload(), Device::Cpu, 1e6).unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("the smallest predicted peak is") && err.contains("its largest term is"), "{err}");
        assert!(err.contains("reversible layers"), "{err}");
    }

    #[test]
    fn scoring_only_workloads_vary_only_scoring_settings() {
        let scoring = Workload { train_rows: 0, ..workload() };
        for execution in candidates(&model(), scoring) {
            assert_eq!(execution.micro_batch_rows, None);
            assert_eq!(execution.ff_chunk_len, model().execution.ff_chunk_len);
            assert!(!execution.sliced_attention);
            assert_eq!(execution.reversible, model().execution.reversible);
        }
        let text = describe(&ExecutionConfig { scoring_rows: Some(2), ..Default::default() }, scoring);
        assert_eq!(text, "scoring 2 of 4 rows per pass");
    }
}
