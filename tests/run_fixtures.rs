//! Run folders written by an earlier release (tests/fixtures/runs, made by
//! scripts/make-run-fixtures.sh before the settings were grouped by meaning) load and
//! compute what that release computed: an LSH model whose config.json has
//! `"n_buckets": null`, an imported released-form model, and a strict-causal model.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Relative tolerance on the scores: the same operations may run in another order.
const SCORE_TOLERANCE: f64 = 1e-6;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/runs")
}

/// A copy of fixture run `name` (loading may pin settings into its config.json).
fn copy_of(name: &str) -> PathBuf {
    let to = common::fresh_path(name);
    let status = Command::new("cp").arg("-r").arg(fixtures().join(name)).arg(&to).status().unwrap();
    assert!(status.success());
    to
}

fn reformer_json(args: &[&str]) -> Value {
    common::json_of(&common::reformer(args))
}

fn expected() -> Value {
    common::read_json(&fixtures().join("expected.json"))
}

/// `reformer eval` of fixture `name` with `task_args`, against the recorded scores.
fn scores_as_recorded(name: &str, task_args: &[&str]) {
    let run = copy_of(name);
    let mut args =
        vec!["eval", "--checkpoint", run.to_str().unwrap(), "--eval-bytes", "8192", "--device", "cpu", "--json"];
    args.extend_from_slice(task_args);
    let got = &reformer_json(&args)["results"][0];
    let want = &expected()["eval"][name]["results"][0];
    assert_eq!(got["n_targets"], want["n_targets"], "{name}");
    assert_eq!(got["n_hashes"], want["n_hashes"], "{name}");
    for key in ["loss", "accuracy"] {
        let (got, want) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
        assert!((got - want).abs() <= SCORE_TOLERANCE * want.abs(), "{name} {key}: {got} against {want}");
    }
    std::fs::remove_dir_all(run).unwrap();
}

/// Greedy generation from fixture `name` gives the recorded text.
fn generates_as_recorded(name: &str) {
    let run = copy_of(name);
    let args = ["generate", "--checkpoint", run.to_str().unwrap(), "--prompt", "the quick", "--max-new-tokens", "24"];
    let got = reformer_json(&[&args[..], &["--greedy", "--device", "cpu", "--seed", "1", "--json"]].concat());
    assert_eq!(got["samples"][0], expected()["generate"][name], "{name}");
    std::fs::remove_dir_all(run).unwrap();
}

#[test]
fn an_lsh_run_with_derived_buckets_scores_as_before() {
    scores_as_recorded("lsh-default", &["--task", "duplication"]);
}

#[test]
fn an_imported_released_form_run_scores_and_generates_as_before() {
    let text = fixtures().join("text.txt");
    scores_as_recorded(
        "imported",
        &["--task", "text", "--data", text.to_str().unwrap(), "--split", "all", "--seq-len", "128"],
    );
    generates_as_recorded("imported");
}

#[test]
fn a_strict_causal_run_scores_and_generates_as_before() {
    let text = fixtures().join("text.txt");
    scores_as_recorded(
        "strict",
        &["--task", "text", "--data", text.to_str().unwrap(), "--split", "all", "--seq-len", "128"],
    );
    generates_as_recorded("strict");
}
