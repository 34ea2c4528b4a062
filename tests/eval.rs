//! `reformer eval` through the binary: it reproduces the training run's validation
//! figure, changes only what it is asked to, and refuses unsafe overrides.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{json_of, scratch};

/// Trains a small [local, lsh] model for a few steps; returns the run folder.
fn trained_run(dir: &Path, task: &[&str], vocab: i64) -> PathBuf {
    let overrides = serde_json::json!({
        "model": {"vocab_size": vocab, "positional": {"kind": "learned"}, "attention": ["local", "lsh"]},
        "train": {"seq_len": 32, "batch_size": 4, "steps": 4, "eval_every": 4, "eval_batches": 2}
    });
    let config = common::write_tiny_config(dir.join("config.json"), overrides);
    let run = dir.join("run");
    common::assert_success(&common::train(&config, &run, task));
    run
}

/// The validation loss the training run logged last.
fn logged_valid_loss(run: &Path) -> f64 {
    common::metrics(run).iter().filter_map(|v| v["valid_loss"].as_f64()).next_back().expect("a validation record")
}

fn eval(run: &Path, extra: &[&str]) -> Output {
    let base = ["eval", "--device", "cpu", "--checkpoint", run.to_str().unwrap(), "--json"];
    common::reformer(&[&base[..], extra].concat())
}

fn text_file(dir: &Path) -> PathBuf {
    let path = dir.join("text.txt");
    let text: String = (0..400).map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog.\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// `text` as the file short.txt in `dir`.
fn short_text(dir: &Path, text: &[u8]) -> PathBuf {
    let path = dir.join("short.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// A run trained on the text of [`text_file`] (bytes); returns the text file and the run.
fn trained_text_run(dir: &Path) -> (PathBuf, PathBuf) {
    let file = text_file(dir);
    let run = trained_run(dir, &["--task", "text", "--data", file.to_str().unwrap()], 256);
    (file, run)
}

const SAME: f64 = 1e-6;
/// How far a loss in bfloat16 autocast may be from the float32 one (nats).
const BF16_LOSS_TOLERANCE: f64 = 0.05;

#[test]
fn eval_reproduces_the_logged_validation_and_reports_every_field() {
    let dir = scratch("dup");
    let run = trained_run(&dir, &[], 16);
    let logged = logged_valid_loss(&run);
    let result = json_of(&eval(&run, &["--training-windows"]));
    let loss = result["results"][0]["loss"].as_f64().unwrap();
    assert!((loss - logged).abs() <= SAME, "eval {loss} vs logged {logged}");
    for key in ["checkpoint", "task", "split", "seq_len", "batch_size", "attention", "trained_n_hashes", "results"] {
        assert!(result.get(key).is_some(), "missing {key}: {result}");
    }
    for key in ["n_hashes", "loss", "bpc", "accuracy", "n_targets", "tokens_per_sec"] {
        assert!(result["results"][0].get(key).is_some(), "missing results.{key}: {result}");
    }
    // The training value of --n-hashes reproduces it; other values give other figures.
    let rows = json_of(&eval(&run, &["--training-windows", "--n-hashes", "2,1,8"]));
    let losses: Vec<f64> = (0..3).map(|i| rows["results"][i]["loss"].as_f64().unwrap()).collect();
    assert!((losses[0] - logged).abs() <= SAME);
    assert!((losses[1] - logged).abs() > SAME && (losses[2] - logged).abs() > SAME, "{losses:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_scores_in_the_runs_precision_unless_told_otherwise() {
    let dir = scratch("bf16");
    let run = trained_run(&dir, &["--precision", "bf16"], 16);
    let logged = logged_valid_loss(&run);
    let default = json_of(&eval(&run, &["--training-windows"]));
    assert_eq!(default["precision"], "bf16");
    let bf16 = default["results"][0]["loss"].as_f64().unwrap();
    assert!((bf16 - logged).abs() <= SAME, "eval {bf16} vs the bf16 run's logged {logged}");
    let float32 = json_of(&eval(&run, &["--training-windows", "--precision", "f32"]));
    assert_eq!(float32["precision"], "f32");
    let f32_loss = float32["results"][0]["loss"].as_f64().unwrap();
    assert!(f32_loss.is_finite() && bf16.is_finite());
    // bfloat16 keeps about 3 significant digits: another loss, but not another model.
    assert!((f32_loss - bf16).abs() > SAME && (f32_loss - bf16).abs() < BF16_LOSS_TOLERANCE, "{f32_loss} vs {bf16}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_of_a_duplication_run_scores_its_validation_set_by_default() {
    let dir = scratch("dup-default-split");
    let run = trained_run(&dir, &[], 16);
    // The paper's Table 2 row, with no --split: duplication has a validation set only.
    let row = json_of(&eval(&run, &["--n-hashes", "1,2,4,8", "--eval-bytes", "2000"]));
    assert_eq!(row["split"], "valid", "{row}");
    let rounds: Vec<i64> = (0..4).map(|i| row["results"][i]["n_hashes"].as_i64().unwrap()).collect();
    assert_eq!(rounds, [1, 2, 4, 8]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_of_a_text_run_scores_each_split() {
    let dir = scratch("text");
    let (_, run) = trained_text_run(&dir);
    let logged = logged_valid_loss(&run);
    let same_windows = json_of(&eval(&run, &["--training-windows"]));
    assert!((same_windows["results"][0]["loss"].as_f64().unwrap() - logged).abs() <= SAME);
    for split in ["train", "valid", "test", "all"] {
        let result = json_of(&eval(&run, &["--split", split, "--eval-bytes", "2000"]));
        let n = result["results"][0]["n_targets"].as_f64().unwrap();
        assert!(n > 0.0 && n <= 2000.0 + 32.0, "{split}: {n} targets");
        assert!(result["results"][0]["bpc"].as_f64().unwrap().is_finite());
    }
    let dense = json_of(&eval(&run, &["--split", "valid", "--attention", "full"]));
    assert!(dense["results"][0]["bpc"].as_f64().unwrap().is_finite());
    // The strict rule (what generation's cache computes) is another model than the
    // paper's rule the run trained with, scored on the same windows.
    let paper = json_of(&eval(&run, &["--split", "valid"]));
    let strict = json_of(&eval(&run, &["--split", "valid", "--attention", "strict"]));
    let (paper, strict) =
        (paper["results"][0]["loss"].as_f64().unwrap(), strict["results"][0]["loss"].as_f64().unwrap());
    assert!(strict.is_finite() && strict != paper, "paper rule {paper}, strict rule {strict}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_text_shorter_than_a_window_per_split_is_scored_whole() {
    // 33 bytes: one window of the run's 32 tokens over the whole file, none in any split.
    let dir = scratch("short");
    let (file, run) = trained_text_run(&dir);
    let short = short_text(&dir, &std::fs::read(&file).unwrap()[..33]);
    let data = ["--task", "text", "--data", short.to_str().unwrap()];
    let whole = json_of(&eval(&run, &[&data[..], &["--split", "all"]].concat()));
    assert_eq!(whole["results"][0]["n_targets"].as_f64(), Some(32.0));
    assert!(whole["results"][0]["bpc"].as_f64().unwrap().is_finite());
    let test_split = eval(&run, &[&data[..], &["--split", "test"]].concat());
    common::assert_fails_saying(&test_split, "fewer than one window");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unsafe_overrides_are_refused_with_one_line() {
    let dir = scratch("errors");
    let (_, run) = trained_text_run(&dir);
    let short = short_text(&dir, b"far too short");
    let cases: [(&[&str], &str); 4] = [
        (&["--seq-len", "65"], "beyond the model's positional range"),
        (&["--n-hashes", "0"], "at least 1"),
        (&["--seq-len", "64", "--data", "/nonexistent/data"], "/nonexistent/data"),
        (&["--data", short.to_str().unwrap()], "fewer than one window"),
    ];
    for (args, needle) in &cases {
        let out = eval(&run, args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(needle), "{args:?}: {stderr}");
    }
    let out = eval(&dir.join("missing-run"), &[]);
    common::assert_fails_saying(&out, "does not exist");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_under_a_memory_budget_prints_its_plan_and_the_same_figure() {
    let dir = scratch("budget");
    let run = trained_run(&dir, &[], 16);
    let plain = json_of(&eval(&run, &["--training-windows"]));
    let out = eval(&run, &["--training-windows", "--memory-budget", "64GiB"]);
    let planned = json_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("memory plan for 64.00 GiB: scoring"), "{stderr}");
    assert_eq!(plain["results"][0]["loss"], planned["results"][0]["loss"]);
    let tiny = eval(&run, &["--training-windows", "--memory-budget", "1MiB"]);
    common::assert_fails_saying(&tiny, "the process alone holds");
    let _ = std::fs::remove_dir_all(&dir);
}
