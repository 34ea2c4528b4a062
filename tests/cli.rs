//! The command line: versions, help, and one clear error line for every user mistake.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_success, reformer, reformer_command, scratch};

/// A command that must succeed (its stderr is the failure message).
fn reformer_ok(args: &[&str]) -> std::process::Output {
    let out = reformer(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A user error: non-zero exit, nothing on stdout, exactly one line on stderr that
/// contains `needle`, and no panic or backtrace.
fn assert_one_line_error(args: &[&str], needle: &str) {
    let out = reformer(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("config:")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
    assert!(lines[0].contains(needle), "{args:?}: expected '{needle}' in: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
}

/// A run configuration of a small model (bytes, learned positions, local then LSH
/// attention) that trains for 2 steps, with `extra` top-level fields (e.g. the task and
/// its data).
fn tiny_config(dir: &Path, extra: serde_json::Value) -> PathBuf {
    let mut overrides = serde_json::json!({
        "model": {"vocab_size": 256, "positional": {"kind": "learned"}, "attention": ["local", "lsh"]},
        "train": {"seq_len": 32, "batch_size": 2, "steps": 2, "eval_every": 2, "eval_batches": 1}
    });
    overrides.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    common::write_tiny_config(dir.join("config.json"), overrides)
}

/// Trains `config` on CPU into `dir/run`; returns the run folder.
fn trained_run(dir: &Path, config: &Path) -> PathBuf {
    let run = dir.join("run");
    train_into(config, &run, &[]);
    run
}

/// Trains `config` on CPU into `run`, with `extra` arguments; the run must succeed.
fn train_into(config: &Path, run: &Path, extra: &[&str]) {
    assert_success(&common::train(config, run, extra));
}

#[test]
fn version_names_crate_and_libtorch() {
    let out = reformer(&["--version"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(concat!("reformer ", env!("CARGO_PKG_VERSION"))), "{stdout}");
    assert!(stdout.contains("libtorch 2.11.0"), "{stdout}");
    assert!(stdout.contains("cuda available:"), "{stdout}");
}

#[test]
fn help_lists_subcommands_and_flags() {
    let out = reformer(&["--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for word in ["train", "generate", "bench"] {
        assert!(stdout.contains(word), "{stdout}");
    }
    let out = reformer(&["train", "--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for flag in ["--task", "--device", "--seed", "--threads", "--resume", "--preset", "--set"] {
        assert!(stdout.contains(flag), "train --help lacks {flag}");
    }
}

#[test]
fn user_mistakes_give_one_clear_line() {
    assert_one_line_error(&["train", "--no-such-flag"], "--no-such-flag");
    assert_one_line_error(&["train", "--task", "text", "--data", "/nonexistent/file.txt"], "/nonexistent/file.txt");
    assert_one_line_error(&["train", "--task", "text"], "--data");
    assert_one_line_error(&["train", "--task", "enwik8", "--data", "/nonexistent/enwik8"], "--download");
    assert_one_line_error(&["train", "--preset", "no-such-preset"], "unknown preset 'no-such-preset'");
    assert_one_line_error(&["train", "--set", "model.d_modle=3"], "unknown setting 'd_modle'");
    assert_one_line_error(&["train", "--set", "model.n_heads=3"], "not divisible by n_heads");
    assert_one_line_error(&["train", "--device", "tpu"], "unknown device 'tpu'");
    assert_one_line_error(&["train", "--config", "/nonexistent/config.json"], "/nonexistent/config.json");
    assert_one_line_error(&["generate", "--checkpoint", "/nonexistent/run"], "does not exist");
    assert_one_line_error(&["train", "--set", "train.duplication.copy_len=400"], "max_seq_len");
}

#[test]
fn a_configured_task_and_data_stand_without_task_and_data_flags() {
    let dir = scratch("configured-task");
    let text = dir.join("text.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog. ".repeat(100)).unwrap();
    let config = tiny_config(&dir, serde_json::json!({"task": "text", "data": text}));
    let run = trained_run(&dir, &config);
    let saved = common::read_json(&run.join("config.json"));
    assert_eq!(saved["task"], "text", "{saved}");
    assert_eq!(saved["data"], text.to_str().unwrap(), "{saved}");
    // A preset's task stands too: enwik8-cpu is an enwik8 preset.
    let out = dir.join("preset-run");
    assert_one_line_error(
        &[
            "train",
            "--preset",
            "enwik8-cpu",
            "--data",
            "/nonexistent/enwik8",
            "--steps",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        "--download",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flags_out_of_range_are_refused_with_one_line_naming_them() {
    let dir = scratch("ranges");
    let run = trained_run(&dir, &tiny_config(&dir, serde_json::json!({"task": "duplication"})));
    let generate = ["generate", "--device", "cpu", "--checkpoint", run.to_str().unwrap(), "--max-new-tokens", "4"];
    for (flag, value) in [("--top-k", "0"), ("--top-p", "0"), ("--top-p", "1.5"), ("--temperature", "-1")] {
        assert_one_line_error(&[&generate[..], &[flag, value]].concat(), flag);
    }
    assert_one_line_error(&[&generate[..], &["--top-k", "-2"]].concat(), "--top-k");
    assert_one_line_error(&["train", "--nproc", "0"], "--nproc");
    assert_one_line_error(&["train", "--dist-timeout", "0"], "--dist-timeout");
    assert_one_line_error(&["train", "--threads", "0"], "--threads");
    // Duplication's figure is a fraction: 99 could never be reached. No run folder is made.
    let out = dir.join("target-99");
    assert_one_line_error(&["train", "--target", "99", "--out", out.to_str().unwrap()], "not 99");
    assert!(!out.exists(), "a refused run left a folder");
    assert_one_line_error(&["train", "--target", "1.5"], "--target 1.5");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_libtorch_failure_is_one_line_and_its_cpp_frames_only_on_request() {
    // One training step of a case longer than its model's positions: libtorch refuses the
    // slice of the position table.
    let case = serde_json::json!({
        "suite": "steps", "label": "too-long", "kind": "step",
        "model": {"vocab_size": 16, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 16,
                  "positional": {"kind": "learned"}, "attention": ["full"]},
        "batch_size": 1, "seq_len": 32, "steps": 1, "warmup_steps": 0
    })
    .to_string();
    let args = ["bench", "--device", "cpu", "--case", &case];
    assert_one_line_error(&args, "exceeds dimension size");
    let out = reformer(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("frame #") && !stderr.contains("Exception raised"), "{stderr}");
    let out = reformer_command(&args).env("RUST_BACKTRACE", "1").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("frame #"), "RUST_BACKTRACE=1 shows libtorch's frames");
}

#[test]
fn bench_refuses_bad_lengths_before_any_case() {
    assert_one_line_error(&["bench", "--suite", "attention", "--device", "cpu", "--lengths", "0"], "--lengths");
    // The duplication preset's model has 256 positions.
    assert_one_line_error(&["bench", "--preset", "duplication", "--device", "cpu", "--lengths", "512"], "max_seq_len");
    assert_one_line_error(&["bench", "--suite", "depth", "--device", "cpu", "--lengths", "1024"], "--lengths");
}

#[test]
fn short_text_file_is_refused_with_its_size() {
    let dir = scratch("short-text");
    let file = dir.join("short.txt");
    std::fs::write(&file, b"too short for a window").unwrap();
    assert_one_line_error(&["train", "--task", "text", "--data", file.to_str().unwrap()], "fewer than one window");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bench --config FILE --set …` measures the file's model (a run folder's config.json
/// names the case after the folder) with the changes applied: here a longer variant
/// whose positions cover the longer length. `--explain` lists the predicted peak term by
/// term beside the measured one; the report carries the terms, which sum to the
/// prediction.
#[test]
fn bench_measures_a_config_file_with_its_changes() {
    let dir = scratch("bench-config");
    std::fs::create_dir_all(dir.join("tiny")).unwrap();
    let config = common::write_tiny_config(dir.join("tiny").join("config.json"), serde_json::json!({}));
    let json = dir.join("bench.json");
    let longer = ["model.max_seq_len=128", r#"model.positional={"kind":"axial","shape":[8,16],"dims":[16,16]}"#];
    let mut args = vec!["bench", "--config", config.to_str().unwrap(), "--lengths", "128", "--device", "cpu"];
    args.extend(["--steps", "1", "--explain", "--json", json.to_str().unwrap()]);
    for change in longer {
        args.extend(["--set", change]);
    }
    let out = reformer_ok(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in ["memory of tiny at T=128", "kept activations", "attention working set", "measured"] {
        assert!(stdout.contains(line), "--explain lacks '{line}':\n{stdout}");
    }
    let report = common::read_json(&json);
    let cases = report["cases"].as_array().unwrap();
    let labels: Vec<&str> = cases.iter().map(|c| c["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["tiny", "tiny-full"]);
    for case in cases {
        assert_eq!(case["status"], "ok", "{case}");
        assert_eq!(case["seq_len"], 128, "{case}");
        let terms = case["predicted_terms"].as_object().expect("the prediction by term");
        let sum: f64 = terms.values().map(|v| v.as_f64().unwrap()).sum();
        let predicted = case["predicted_bytes"].as_f64().unwrap();
        assert!((sum - predicted).abs() <= 1e-6 * predicted, "{sum} against {predicted}");
    }
    // Without the change, 128 tokens are beyond the file's max_seq_len: one line says how to raise it.
    let too_long = ["bench", "--config", config.to_str().unwrap(), "--lengths", "128", "--device", "cpu"];
    assert_one_line_error(&too_long, "--set model.max_seq_len");
    assert_one_line_error(&["bench", "--set", "model.d_model=64", "--device", "cpu"], "--preset or --config");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn partner_reach_is_refused_outside_the_duplication_task() {
    let dir = scratch("partner-reach-text");
    let file = dir.join("text.txt");
    std::fs::write(&file, "the quick brown fox jumps over the lazy dog. ".repeat(100)).unwrap();
    let text = ["train", "--task", "text", "--data", file.to_str().unwrap()];
    assert_one_line_error(&[&text[..], &["--set", "train.partner_reach=true"]].concat(), "duplication task only");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_reports_cases_predicted_not_to_fit_and_goes_on() {
    let dir = scratch("bench");
    let json = dir.join("bench.json");
    // 2^22 tokens: every attention kind's prediction is tens of GiB or more.
    reformer_ok(&[
        "bench",
        "--suite",
        "attention",
        "--lengths",
        "4194304",
        "--device",
        "cpu",
        "--json",
        json.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6, "LSH with 1, 2, 4, 8 rounds, local, full");
    for case in cases {
        assert_eq!(case["status"], "skipped", "{case}");
        assert!(case["predicted_bytes"].as_f64().unwrap() > 16.0 * (1u64 << 30) as f64, "{case}");
    }
    for key in ["device", "threads", "libtorch", "cuda_available", "git_commit"] {
        assert!(report["machine"].get(key).is_some(), "machine lacks {key}");
    }
    let plot = dir.join("figure.svg");
    reformer_ok(&["bench", "--from", json.to_str().unwrap(), "--plot", plot.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `train` draws its validation curve into the run folder; `plot` overlays several runs
/// with their labels; a folder that is not a run, or a run without a validation, is one
/// clear line.
#[test]
fn training_curves_are_drawn_per_run_and_overlaid_by_plot() {
    let dir = scratch("plot");
    let config = tiny_config(&dir, serde_json::json!({}));
    let run = trained_run(&dir, &config);
    let curve = std::fs::read_to_string(run.join("curve.svg")).expect("train draws curve.svg");
    assert!(curve.contains("<svg") && curve.contains("second-copy accuracy"), "{curve}");

    let second = dir.join("second");
    train_into(&config, &second, &["--seed", "1"]);
    let figure = dir.join("both.svg");
    reformer_ok(&[
        "plot",
        run.to_str().unwrap(),
        second.to_str().unwrap(),
        "--labels",
        "first-run,second-run",
        "--out",
        figure.to_str().unwrap(),
    ]);
    let svg = std::fs::read_to_string(&figure).unwrap();
    for text in ["first-run", "second-run", "minutes of training", "steps"] {
        assert!(svg.contains(text), "the figure lacks '{text}'");
    }

    let not_a_run = dir.join("empty");
    std::fs::create_dir_all(&not_a_run).unwrap();
    assert_one_line_error(
        &["plot", not_a_run.to_str().unwrap(), "--out", figure.to_str().unwrap()],
        "not a run folder",
    );
    std::fs::write(run.join("metrics.jsonl"), "").unwrap();
    assert_one_line_error(&["plot", run.to_str().unwrap(), "--out", figure.to_str().unwrap()], "no validation yet");
    assert_one_line_error(
        &["plot", run.to_str().unwrap(), "--labels", "a,b", "--out", "x.svg"],
        "--labels names 2 runs",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A transformers Reformer folder (the enwik8-like golden fixture) imported, then scored,
/// sampled (with and without the decoding cache) and fine-tuned from the command line.
#[test]
fn an_imported_transformers_model_scores_generates_and_fine_tunes() {
    let dir = scratch("import");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-reformer/enwik8-like");
    let run = dir.join("imported");
    reformer_ok(&["import", "--from", fixture.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    let text = dir.join("prose.txt");
    let prose = "It was the best of times, it was the worst of times, it was the age of wisdom. ";
    std::fs::write(&text, prose.repeat(400)).unwrap();
    let (run_arg, text_arg) = (run.to_str().unwrap(), text.to_str().unwrap());

    let out = reformer_ok(&[
        "eval",
        "--checkpoint",
        run_arg,
        "--device",
        "cpu",
        "--task",
        "text",
        "--data",
        text_arg,
        "--split",
        "test",
        "--seq-len",
        "128",
        "--eval-bytes",
        "2048",
        "--json",
    ]);
    let score: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval --json prints JSON");
    let bpc = score["results"][0]["bpc"].as_f64().unwrap_or(f64::NAN);
    assert!(bpc.is_finite() && bpc > 0.0, "{score}");

    for cache in [&[][..], &["--no-cache"][..]] {
        let mut args = vec!["generate", "--checkpoint", run_arg, "--device", "cpu", "--prompt", "It was the"];
        args.extend_from_slice(&["--max-new-tokens", "40", "--greedy"]);
        args.extend_from_slice(cache);
        let out = reformer_ok(&args);
        assert!(out.stdout.len() >= 40, "{cache:?}: {} bytes out", out.stdout.len());
    }

    let tuned = dir.join("tuned");
    let out = reformer_ok(&[
        "train",
        "--device",
        "cpu",
        "--init-from",
        run_arg,
        "--task",
        "text",
        "--data",
        text_arg,
        "--out",
        tuned.to_str().unwrap(),
        "--steps",
        "2",
        "--set",
        "train.seq_len=128",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.eval_every=2",
        "--set",
        "train.warmup_steps=1",
        "--set",
        "model.sliced_attention=true",
        "--eval-bytes",
        "1024",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("starting from the weights of"), "{stderr}");
    let config = common::read_json(&tuned.join("config.json"));
    assert_eq!(config["model"]["compat"]["token_offset"], 2, "the imported model's settings carry over");
    assert_eq!(config["model"]["lsh"]["window"], "released");
    assert_eq!(
        config["model"]["execution"]["sliced_attention"], true,
        "--set model.* still applies, by its old name too"
    );

    assert_one_line_error(&["import", "--from", fixture.to_str().unwrap(), "--out", run_arg], "exists already");
    let _ = std::fs::remove_dir_all(&dir);
}
