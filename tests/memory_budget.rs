//! `train --memory-budget`: a budget below what the configured run needs makes the planner
//! choose memory-saving execution settings; the run then stays under the budget (its
//! whole process's peak resident memory) and trains exactly the steps of the unplanned
//! run. The plan is recorded in config.json and kept on resume; an impossible budget and
//! a malformed size are one line each.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

/// A duplication run of 2,047 tokens per sequence (LSH and local attention, width 64,
/// batches of 4): large enough that its activations, not libtorch, decide its memory.
fn config(dir: &Path) -> PathBuf {
    write_tiny_config(
        dir.join("config.json"),
        json!({
            "model": {"d_model": 64, "d_ff": 256, "max_seq_len": 2048,
                      "positional": {"kind": "axial", "shape": [32, 64], "dims": [32, 32]}},
            "train": {"duplication": {"n_symbols": 16, "copy_len": 1023}, "batch_size": 4,
                      "eval_every": 2, "eval_batches": 1, "log_every": 1}
        }),
    )
}

fn plan_of(run: &Path) -> Value {
    read_json(&run.join("config.json"))["memory_plan"].clone()
}

fn execution_of(run: &Path) -> Value {
    read_json(&run.join("config.json"))["model"]["execution"].clone()
}

/// The run's logged losses and accuracies, in order.
fn figures(run: &Path) -> Vec<f64> {
    metrics(run)
        .iter()
        .flat_map(|record| ["loss", "accuracy", "valid_loss"].map(|key| record[key].as_f64()))
        .flatten()
        .collect()
}

fn mib(bytes: f64) -> String {
    format!("{}MiB", (bytes / 1048576.0).floor() as i64)
}

#[test]
fn a_tight_budget_is_met_by_a_plan_that_trains_the_same_steps() {
    let dir = scratch("tight");
    let config = config(&dir);
    let steps = ["--steps", "4", "--seed", "5", "--json"];

    // The configured run, unplanned.
    let unplanned = dir.join("unplanned");
    let unplanned_summary = json_of(&train(&config, &unplanned, &steps));
    let unplanned_peak = unplanned_summary["peak_memory_bytes"].as_f64().unwrap();
    assert!(plan_of(&unplanned).is_null());

    // An ample budget: the plain computation (the fastest), and its prediction.
    let ample = dir.join("ample");
    assert_success(&train(&config, &ample, &[&steps[..], &["--memory-budget", "64GiB"]].concat()));
    let plan = plan_of(&ample);
    let process = plan["process_bytes"].as_f64().unwrap();
    let plain_model_peak = plan["predicted_peak_bytes"].as_f64().unwrap() - process;
    assert_eq!(execution_of(&ample)["reversible"], json!(false), "{plan}");
    assert!(plain_model_peak > 30e6, "the model's part should dominate the check: {plain_model_peak}");

    // Budgets that leave the model 60% and 45% of the plain computation's peak.
    for share in [0.6, 0.45] {
        let budget = mib(process + share * plain_model_peak);
        let run = dir.join(format!("budget-{share}"));
        let summary = json_of(&train(&config, &run, &[&steps[..], &["--memory-budget", &budget]].concat()));
        let execution = execution_of(&run);
        let saves = execution["reversible"] == json!(true) || !execution["micro_batch_rows"].is_null();
        assert!(saves, "{share}: no memory-saving setting chosen: {execution}");
        let peak = summary["peak_memory_bytes"].as_f64().unwrap();
        let budget_bytes = plan_of(&run)["budget_bytes"].as_f64().unwrap();
        assert!(peak <= budget_bytes, "{share}: peak {peak} over the budget {budget_bytes} ({execution})");
        assert!(peak < unplanned_peak, "{share}: peak {peak}, unplanned {unplanned_peak}");
        let (expected, actual) = (figures(&unplanned), figures(&run));
        assert_eq!(expected.len(), actual.len());
        for (a, b) in expected.iter().zip(&actual) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{share}: {a} unplanned, {b} planned ({execution})");
        }
        let (a, b) = (unplanned_summary["valid_loss"].as_f64().unwrap(), summary["valid_loss"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-5 * a, "{share}: final validation {a} unplanned, {b} planned");
    }

    // Resumed, the run keeps its plan; a new budget for it is refused.
    let resumed = dir.join("budget-0.45");
    let before = read_json(&resumed.join("config.json"));
    let out = reformer(&["train", "--device", "cpu", "--resume", resumed.to_str().unwrap(), "--steps", "6"]);
    assert_success(&out);
    assert_eq!(read_json(&resumed.join("config.json")), before);
    let again = reformer(&["train", "--resume", resumed.to_str().unwrap(), "--memory-budget", "8GiB"]);
    assert_fails_saying(&again, "--memory-budget");

    // Nothing fits a budget of a few MiB beyond the process: one line with the smallest peak.
    let out = train(&config, &dir.join("impossible"), &["--memory-budget", &mib(process + 4e6)]);
    assert_fails_saying(&out, "nothing fits: the smallest predicted peak is");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_malformed_or_too_small_budget_is_one_line() {
    let dir = scratch("malformed");
    let config = config(&dir);
    for (size, says) in [
        ("12", "give a size with its unit, e.g. 8GiB"),
        ("8 bananas", "e.g. 8GiB"),
        ("1MiB", "the process alone holds"),
    ] {
        let out = train(&config, &dir.join("run"), &["--memory-budget", size]);
        assert_fails_saying(&out, says);
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1, "{size}");
        assert!(!dir.join("run").exists(), "{size}: a run folder was made");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
