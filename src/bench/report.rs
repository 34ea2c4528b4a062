//! The bench report: one typed row per case (what ran, how it went, what it measured),
//! the machine, and the precision suite's extra measurements; written once as JSON by
//! `--json`, read back by `--from`, and tabulated from the same rows.

use crate::memory_plan::step_time::{StepTimeModel, StepWork};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Device;

use super::case::{Case, CaseKind, Measurement};
use super::memory_model::MemoryBreakdown;
use super::precision::{DuplicationRun, ReconstructionError};
use crate::model::AttentionKind;
use crate::precision::Precision;

const MIB: f64 = (1 << 20) as f64;

/// How a case ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It ran and was measured.
    Ok,
    /// Its process ran out of memory (or was killed).
    Oom,
    /// Its process failed otherwise.
    Failed,
    /// Not run: its predicted memory exceeds what is available.
    Skipped,
}

impl Status {
    /// The status as the report writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Oom => "oom",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// One case of a report: what ran, how it ended, and (when it ran) what it measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseRow {
    pub suite: String,
    pub label: String,
    pub attention: AttentionKind,
    pub n_hashes: i64,
    pub seq_len: i64,
    pub batch_size: i64,
    /// 1 for a single attention layer.
    pub n_layers: i64,
    pub reversible: bool,
    pub ff_chunked: bool,
    /// Reports before precision was recorded measured float32.
    #[serde(default)]
    pub precision: Precision,
    /// `lsh_fused::path_name`, or "-" without LSH layers (or in reports before it was
    /// recorded).
    #[serde(default = "no_lsh_path")]
    pub lsh_path: String,
    pub status: Status,
    /// All zero unless the case ran.
    #[serde(flatten)]
    pub measured: Measurement,
    /// The memory model's prediction in bytes (0 in reports before it was recorded).
    #[serde(default)]
    pub predicted_bytes: f64,
    /// The prediction term by term (absent in reports before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_terms: Option<MemoryBreakdown>,
    pub flops_per_token: f64,
    /// Model FLOP/s over the device's fp32 matmul rate (0 unless the case ran).
    pub utilization: f64,
    /// A training step's work as the step-time model counts it, and the time it predicts
    /// (absent for layer cases and in reports before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_work: Option<StepWork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_ms: Option<f64>,
}

fn no_lsh_path() -> String {
    "-".into()
}

impl CaseRow {
    /// The row of `case` run on `device`: `measured` is zero unless `status` is Ok;
    /// `peak_flops` is the device's matmul rate.
    pub fn new(
        case: &Case,
        device: Device,
        status: Status,
        measured: Measurement,
        predicted: MemoryBreakdown,
        peak_flops: f64,
    ) -> Self {
        let flops_per_token = case.flops_per_token();
        let step_work = (case.kind == CaseKind::Step).then(|| StepWork::of(&case.model, case.batch_size, case.seq_len));
        let utilization =
            if status == Status::Ok { flops_per_token * measured.tokens_per_sec / peak_flops } else { 0.0 };
        Self {
            suite: case.suite.clone(),
            label: case.label.clone(),
            attention: case.attention(),
            n_hashes: case.model.lsh.n_hashes,
            seq_len: case.seq_len,
            batch_size: case.batch_size,
            n_layers: if case.kind == CaseKind::Layer { 1 } else { case.model.n_layers },
            reversible: case.model.execution.reversible,
            ff_chunked: case.model.execution.ff_chunk_len.is_some(),
            precision: case.precision,
            lsh_path: case.lsh_path(device),
            status,
            measured,
            predicted_bytes: predicted.total(),
            predicted_terms: Some(predicted),
            flops_per_token,
            utilization,
            step_work,
            predicted_ms: step_work.map(|work| StepTimeModel::for_device(device).secs(work) * 1e3),
        }
    }
}

/// The machine a report was measured on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub device: String,
    pub threads: i32,
    pub libtorch: String,
    pub cuda_available: bool,
    /// The commit the binary was built from, when run inside the repository.
    pub git_commit: Option<String>,
    pub allocator: String,
}

impl Machine {
    pub fn of(device: Device) -> Self {
        let commit =
            Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok().filter(|o| o.status.success());
        Self {
            device: crate::device::describe(device),
            threads: tch::get_num_threads(),
            libtorch: crate::LIBTORCH_VERSION.into(),
            cuda_available: tch::Cuda::is_available(),
            git_commit: commit.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
            allocator: crate::allocator::describe(),
        }
    }
}

/// The precision suite's measurements beyond step time and memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct PrecisionReport {
    pub reconstruction: Vec<ReconstructionError>,
    /// Only with `--suite precision` (not `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplication: Option<Vec<DuplicationRun>>,
}

/// What `bench --json` writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub machine: Machine,
    /// The device's fp32 matmul rate, in FLOP/s.
    pub matmul_flops: f64,
    pub cases: Vec<CaseRow>,
    /// Null unless the precision suite ran (absent in reports before it existed).
    #[serde(default)]
    pub precision: Option<PrecisionReport>,
}

impl BenchReport {
    /// The report written to `path` by an earlier `bench --json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read bench report {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a bench JSON report", path.display()))
    }
}

/// An error when cases ran and every one of them failed (a case predicted not to fit is
/// skipped, not failed).
pub fn check_some_measured(rows: &[CaseRow]) -> Result<()> {
    let count = |statuses: &[Status]| rows.iter().filter(|r| statuses.contains(&r.status)).count();
    let failed = count(&[Status::Failed, Status::Oom]);
    if failed > 0 && count(&[Status::Ok]) == 0 {
        bail!("every case that ran failed ({failed} of {}): see the lines above", rows.len());
    }
    Ok(())
}

/// The rows as a table on stdout: what ran, and its measurements or how it ended.
pub fn print_table(rows: &[CaseRow]) {
    println!(
        "{:<10} {:<12} {:>7} {:>6} {:>7} {:>10} {:>9} {:>11} {:>10} {:>10} {:>6}  LSH path",
        "suite", "case", "T", "batch", "layers", "ms/step", "us/token", "tokens/s", "peak MiB", "pred. MiB", "util"
    );
    for r in rows {
        let case = format!("{:<10} {:<12} {:>7} {:>6} {:>7}", r.suite, r.label, r.seq_len, r.batch_size, r.n_layers);
        let predicted_mib = r.predicted_bytes / MIB;
        if r.status != Status::Ok {
            println!("{case} {:>42} {predicted_mib:>10.0}", r.status.name());
            continue;
        }
        let m = &r.measured;
        println!(
            "{case} {:>10.1} {:>9.2} {:>11.0} {:>10.1} {predicted_mib:>10.0} {:>5.1}%  {}",
            m.ms_per_step,
            m.us_per_token,
            m.tokens_per_sec,
            m.peak_bytes as f64 / MIB,
            100.0 * r.utilization,
            r.lsh_path
        );
    }
}

/// Each measured row's predicted peak term by term (MiB), beside the measured peak
/// (`reformer bench --explain`): where the memory goes, and how far the model is off.
pub fn print_breakdowns(rows: &[CaseRow]) {
    for r in rows {
        let Some(terms) = &r.predicted_terms else { continue };
        println!("memory of {} at T={} (predicted, MiB):", r.label, r.seq_len);
        for (name, bytes) in terms.terms() {
            println!("  {name:<24} {:>10.1}", bytes / MIB);
        }
        let total = terms.total();
        print!("  {:<24} {:>10.1}", "predicted peak", total / MIB);
        match r.status {
            Status::Ok if r.measured.peak_bytes > 0 => {
                let measured = r.measured.peak_bytes as f64;
                println!("; measured {:.1} ({:+.1}%)", measured / MIB, 100.0 * (total - measured) / measured);
            }
            _ => println!("; {}", r.status.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Status) -> CaseRow {
        let json = serde_json::json!({
            "suite": "attention", "label": "lsh-1", "attention": "lsh", "n_hashes": 1, "seq_len": 1024,
            "batch_size": 1, "n_layers": 1, "reversible": false, "ff_chunked": false, "status": status,
            "ms_per_step": 0.0, "us_per_token": 0.0, "tokens_per_sec": 0.0, "peak_bytes": 0, "step_ms": [],
            "flops_per_token": 1.0, "utilization": 0.0,
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_bench_fails_when_no_case_that_ran_succeeded() {
        let rows = |statuses: &[Status]| -> Vec<CaseRow> { statuses.iter().map(|&s| row(s)).collect() };
        assert!(check_some_measured(&rows(&[Status::Failed, Status::Oom, Status::Skipped])).is_err());
        assert!(check_some_measured(&rows(&[Status::Failed, Status::Ok])).is_ok());
        assert!(check_some_measured(&rows(&[Status::Skipped, Status::Skipped])).is_ok());
    }

    #[test]
    fn a_status_reads_in_the_table_as_in_the_report() {
        for status in [Status::Ok, Status::Oom, Status::Failed, Status::Skipped] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.name());
        }
    }

    /// Every report recorded under docs/ still loads, and its rows written again have
    /// the keys they were read with (older reports lack only precision, lsh_path,
    /// predicted_bytes and process_peak_bytes).
    #[test]
    fn recorded_reports_load_and_keep_their_keys() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        let mut n_reports = 0;
        for entry in std::fs::read_dir(&docs).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.starts_with("bench-") && name.ends_with(".json")) {
                continue;
            }
            let report = BenchReport::read(&path).unwrap();
            let recorded: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for (row, recorded) in report.cases.iter().zip(recorded["cases"].as_array().unwrap()) {
                let written = serde_json::to_value(row).unwrap();
                let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
                let mut missing: Vec<String> =
                    keys(&written).into_iter().filter(|k| recorded.get(k).is_none()).collect();
                let added_later = ["precision", "lsh_path", "predicted_bytes", "process_peak_bytes"];
                missing.retain(|k| !added_later.contains(&k.as_str()));
                assert!(missing.is_empty(), "{name}: the recorded row lacks {missing:?}");
                assert!(keys(recorded).iter().all(|k| written.get(k) == Some(&recorded[k])), "{name}: {recorded}");
            }
            n_reports += 1;
        }
        assert!(n_reports > 0, "no bench reports under {}", docs.display());
    }
}
