//! Training end to end through the binary: exact resume, checkpoints that survive a
//! kill at any instant, a non-finite loss that stops the run (or a skipped step that is
//! still logged, validated and saved), a resumed run that keeps its learning-rate
//! schedule, sampling a checkpoint with and without the decoding cache.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{assert_success, json_of, reformer, reformer_command, reformer_with_env, scratch, train};

/// How long a tiny run may take to write its first checkpoint on a loaded machine.
const FIRST_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// A small duplication run: 2 layers of LSH and local attention, dropout on.
fn tiny_config(dir: &Path, steps: i64, eval_every: i64) -> PathBuf {
    let overrides = serde_json::json!({
        "model": {"dropout_hidden": 0.1, "dropout_attention": 0.1},
        "train": {
            "batch_size": 4, "steps": steps, "lr": 3e-3, "warmup_steps": 2, "schedule": "rsqrt",
            "log_every": 1, "eval_every": eval_every, "eval_batches": 1, "keep_last": 2
        }
    });
    common::write_tiny_config(dir.join("config.json"), overrides)
}

/// A scratch folder named `name` with [`tiny_config`] in it, and where its run goes:
/// (folder, config, run folder).
fn tiny_run(name: &str, steps: i64, eval_every: i64) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name);
    let config = tiny_config(&dir, steps, eval_every);
    let run = dir.join("run");
    (dir, config, run)
}

/// `train` with extra environment variables.
fn train_with_env(config: &Path, run: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    common::run(common::train_command(config, run, extra).envs(env.iter().copied()))
}

/// `reformer generate --json` on CPU from the run folder `run`, `n` new tokens.
fn generate(run: &Path, n: &str, extra: &[&str]) -> Output {
    let base = ["generate", "--device", "cpu", "--checkpoint", run.to_str().unwrap(), "--max-new-tokens", n, "--json"];
    reformer(&[&base[..], extra].concat())
}

fn latest_weights(run: &Path) -> Vec<u8> {
    let name = std::fs::read_to_string(run.join("latest")).unwrap();
    std::fs::read(run.join("checkpoints").join(name.trim()).join("model.safetensors")).unwrap()
}

/// metrics.jsonl without the wall-clock fields.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let mut records = common::metrics(run);
    for record in &mut records {
        let object = record.as_object_mut().unwrap();
        object.remove("elapsed");
        object.remove("tokens_per_sec");
    }
    records
}

#[test]
fn resume_equals_uninterrupted_bit_for_bit() {
    let dir = scratch("resume");
    let config = tiny_config(&dir, 8, 4);
    let (whole, split) = (dir.join("whole"), dir.join("split"));
    let cpu = ["--device", "cpu", "--seed", "3"];
    let run =
        |extra: &[&str]| reformer(&[&["train", "--config", config.to_str().unwrap()][..], &cpu[..], extra].concat());
    assert_success(&run(&["--out", whole.to_str().unwrap()]));
    assert_success(&run(&["--out", split.to_str().unwrap(), "--steps", "4"]));
    assert_success(&reformer(
        &[&["train", "--resume", split.to_str().unwrap(), "--steps", "8"][..], &cpu[..]].concat(),
    ));
    assert!(latest_weights(&whole) == latest_weights(&split), "weights after 8 steps differ");
    assert_eq!(metrics(&whole), metrics(&split));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Gradient accumulation computes the whole batch: a batch of 4 in 2 micro-batches of 2
/// (dropout on, LSH and local attention) logs the training losses and accuracies of a
/// batch of 4 at once, step by step (so its updates were the same), to float32 rounding.
/// (Validation scores `eval_batches` batches of `batch_size`: other sequences here.)
#[test]
fn micro_batches_train_as_the_whole_batch() {
    let (dir, config, whole) = tiny_run("micro", 4, 4);
    let parts = dir.join("parts");
    assert_success(&train(&config, &whole, &["--seed", "3"]));
    let micro = ["--seed", "3", "--set", "train.batch_size=2", "--set", "train.grad_accumulation=2"];
    assert_success(&train(&config, &parts, &micro));
    let (whole_metrics, part_metrics) = (metrics(&whole), metrics(&parts));
    assert_eq!(whole_metrics.len(), part_metrics.len());
    let mut compared = 0;
    for (w, p) in whole_metrics.iter().zip(&part_metrics) {
        for key in ["loss", "accuracy"] {
            if let (Some(a), Some(b)) = (w[key].as_f64(), p[key].as_f64()) {
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{key}: {a} whole, {b} in micro-batches\n{w}\n{p}");
                compared += 1;
            }
        }
    }
    assert!(compared >= 8, "too few figures compared: {compared}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until `path` exists; false if `child` exits first or the wait times out.
fn wait_while_running(child: &mut std::process::Child, path: &Path) -> bool {
    let started = std::time::Instant::now();
    while !path.exists() {
        if child.try_wait().unwrap().is_some() || started.elapsed() > FIRST_CHECKPOINT_TIMEOUT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[test]
fn a_kill_at_any_instant_leaves_a_loadable_checkpoint() {
    // A validation, and so a checkpoint, every step.
    let (dir, config, run) = tiny_run("kill", 100_000, 1);
    // Kills at instants after the first checkpoint (whenever the machine gets there),
    // then at fixed instants from the start, which may or may not precede it.
    let kills = [(true, 0), (true, 37), (true, 113), (true, 260), (false, 1500), (false, 1910)];
    let mut checked = 0;
    for (after_first_checkpoint, delay_ms) in kills {
        let mut child = common::train_command(&config, &run, &[]).stderr(Stdio::null()).spawn().unwrap();
        let waited = !after_first_checkpoint || wait_while_running(&mut child, &run.join("latest"));
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
        assert!(waited, "no checkpoint within {FIRST_CHECKPOINT_TIMEOUT:?}, or training exited");
        if run.join("latest").exists() {
            assert_success(&generate(&run, "2", &[]));
            checked += 1;
        }
        let _ = std::fs::remove_dir_all(&run);
    }
    assert!(checked >= 4, "only {checked} kills came after a checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let (dir, config, run) = tiny_run("nan", 50, 1);
    let out = common::train_command(&config, &run, &[]).env("REFORMER_INJECT_NAN_AT_STEP", "3").output().unwrap();
    common::assert_fails_saying(&out, "step 3: non-finite loss");
    assert_eq!(std::fs::read_to_string(run.join("latest")).unwrap(), "step-00000002");
    let out = generate(&run, "1", &[]);
    assert_success(&out);
    assert_success(&reformer(&["train", "--device", "cpu", "--resume", run.to_str().unwrap(), "--steps", "4"]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_diverging_run_stops_instead_of_training_on_nan() {
    let (dir, config, run) = tiny_run("diverge", 50, 1);
    let out = train(
        &config,
        &run,
        &["--set", "train.lr=1e38", "--set", "train.clip_grad_norm=null", "--set", "train.warmup_steps=0"],
    );
    common::assert_fails_saying(&out, "non-finite loss");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_trained_checkpoint_generates_and_reports_json() {
    let (dir, config, run) = tiny_run("generate", 3, 3);
    let out = train(&config, &run, &["--json"]);
    assert_success(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("train --json prints one object");
    for key in ["task", "steps", "valid_loss", "valid_accuracy", "tokens_per_sec", "checkpoint", "accuracy_by_rounds"] {
        assert!(summary.get(key).is_some(), "summary lacks {key}: {summary}");
    }
    assert_eq!(summary["steps"], 3);
    let out = generate(&run, "5", &["--prompt", "\u{1}\u{2}", "--seed", "1"]);
    let result = json_of(&out);
    assert_eq!(result["new_tokens"], 5);
    assert_eq!(result["cache"], true);
    let out = reformer(&["generate", "--device", "cpu", "--checkpoint", run.to_str().unwrap(), "--prompt", "ab"]);
    common::assert_fails_saying(&out, "outside this model's 16-symbol vocabulary");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cached_and_uncached_greedy_sampling_agree_and_run_past_the_window() {
    let (dir, config, run) = tiny_run("generate-cache", 3, 3);
    assert_success(&train(&config, &run, &["--set", "model.lsh.strict_causal=true"]));
    let sample = |n: &str, extra: &[&str]| {
        let out = generate(&run, n, &[&["--greedy", "--prompt", "\u{1}\u{2}\u{3}"], extra].concat());
        assert_success(&out);
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (result["samples"][0].as_str().unwrap().to_string(), result)
    };
    // 3 prompt tokens + 61 new ones fill the 64-token window exactly.
    let (cached, result) = sample("61", &[]);
    let (uncached, plain) = sample("61", &["--no-cache"]);
    assert_eq!(cached, uncached, "greedy tokens differ between the cache and the full forward pass");
    assert_eq!((result["cache"].as_bool(), plain["cache"].as_bool()), (Some(true), Some(false)));
    // Past the window the cache starts over from the last half of it.
    let (long, result) = sample("150", &[]);
    assert_eq!(result["new_tokens"], 150);
    assert!(long.starts_with(&cached));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_stopped_by_its_time_limit_validates_and_can_mark_its_last_checkpoint_best() {
    let (dir, config, run) = tiny_run("time-limit", 1_000_000, 1_000_000);
    let out = train(&config, &run, &["--time-limit", "0.05"]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("time limit reached"));
    let read = |name: &str| std::fs::read_to_string(run.join(name)).unwrap();
    assert_eq!(read("best"), read("latest"), "the only validated checkpoint is the best");
    assert!(metrics(&run).iter().any(|m| m.get("valid_loss").is_some()), "the stop's validation is logged");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `train.minutes` is a time budget: the run stops when it is spent, validated, and its
/// cosine has decayed over the minutes (the last logged learning rates fall towards the
/// floor although the step horizon is far away). The budget, 12 seconds, leaves room for
/// a few steps on a loaded machine.
#[test]
fn a_time_budget_stops_the_run_and_decays_the_cosine_over_the_minutes() {
    let (dir, config, run) = tiny_run("budget", 1_000_000, 1_000_000);
    let budget = ["--set", "train.minutes=0.2", "--set", "train.schedule=cosine", "--set", "train.warmup_steps=1"];
    let out = train(&config, &run, &budget);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("time limit reached"));
    let lrs: Vec<f64> = metrics(&run).iter().filter_map(|m| m["lr"].as_f64()).collect();
    let (first, last) = (lrs[0], *lrs.last().unwrap());
    assert!(lrs.len() > 3, "too few steps to see the schedule: {lrs:?}");
    assert!(last < 0.5 * first, "the cosine did not follow the budget: {first} then {last}");
    assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "{lrs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--target` stops at the first validation that reaches it (accuracy for duplication,
/// at or above); an unreachable one lets the run go to its last step.
#[test]
fn a_run_stops_at_the_first_validation_that_reaches_its_target() {
    let (dir, config, run) = tiny_run("target", 6, 2);
    let out = train(&config, &run, &["--target", "0.0", "--json"]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("target reached"));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["steps"].as_i64(), Some(2), "accuracy 0 is reached at the first validation");
    let read = |name: &str| std::fs::read_to_string(run.join(name)).unwrap();
    assert_eq!(read("latest"), read("best"));

    let unreachable = dir.join("unreachable");
    let out = train(&config, &unreachable, &["--target", "1.0", "--json"]);
    let summary = json_of(&out);
    assert_eq!(summary["steps"].as_i64(), Some(6));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_skipped_step_on_an_evaluation_boundary_is_still_validated_logged_and_saved() {
    let (dir, config, run) = tiny_run("skip", 6, 3);
    let skip = ["--set", "train.on_non_finite=skip", "--json"];
    let out = train_with_env(&config, &run, &skip, &[("REFORMER_INJECT_NAN_AT_STEP", "3")]);
    let summary = json_of(&out);
    assert_eq!((summary["steps"].as_i64(), summary["skipped_steps"].as_i64()), (Some(6), Some(1)));
    assert!(run.join("checkpoints/step-00000003/state.json").exists(), "the skipped step's checkpoint is missing");
    let at_3: Vec<_> = metrics(&run).into_iter().filter(|m| m["step"] == 3).collect();
    assert!(at_3.iter().any(|m| m.get("valid_loss").is_some()), "step 3 was not validated: {at_3:?}");
    let logged = at_3.iter().find(|m| m.get("lr").is_some()).unwrap_or_else(|| panic!("step 3 not logged: {at_3:?}"));
    assert!(logged["loss"].is_null(), "a window of a skipped step only has no loss: {logged}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_resumed_run_keeps_the_schedule_it_started_with() {
    let (dir, config, run) = tiny_run("horizon", 10, 10);
    assert_success(&train(&config, &run, &["--set", "train.schedule=cosine"]));
    assert_success(&reformer(&["train", "--device", "cpu", "--resume", run.to_str().unwrap(), "--steps", "20"]));
    let config = common::read_json(&run.join("config.json"));
    let final_lr = config["train"]["lr"].as_f64().unwrap() * config["train"]["final_lr_fraction"].as_f64().unwrap();
    let lrs: Vec<(i64, f64)> =
        metrics(&run).iter().filter_map(|m| Some((m["step"].as_i64()?, m.get("lr")?.as_f64()?))).collect();
    assert_eq!(lrs.iter().map(|(step, _)| *step).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    // The 10-step cosine reaches its floor at step 10; steps past its horizon stay there.
    for &(step, lr) in &lrs[9..] {
        assert!((lr - final_lr).abs() <= 1e-12 * final_lr, "step {step}: lr {lr}, the schedule's end is {final_lr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The arguments that make `tiny_config`'s model (LSH and local attention) train in
/// float16 autocast on the CPU.
const FLOAT16: [&str; 2] = ["--precision", "f16"];

fn weights_at(run: &Path, step: i64) -> Vec<u8> {
    std::fs::read(run.join(format!("checkpoints/step-{step:08}/model.safetensors"))).unwrap()
}

/// The logged loss scale of each training record, by step.
fn loss_scales(run: &Path) -> Vec<(i64, f64)> {
    metrics(run).iter().filter_map(|m| Some((m["step"].as_i64()?, m.get("loss_scale")?.as_f64()?))).collect()
}

#[test]
fn an_overflowed_float16_step_is_skipped_halves_the_loss_scale_and_the_run_goes_on() {
    let (dir, config, run) = tiny_run("overflow", 6, 1);
    let extra = [&FLOAT16[..], &["--set", "train.keep_last=10", "--json"]].concat();
    let out = train_with_env(&config, &run, &extra, &[("REFORMER_INJECT_OVERFLOW_AT_STEP", "3")]);
    let summary = json_of(&out);
    assert_eq!(summary["steps"], 6);
    // The overflow is the scaler's, not the non-finite guard's (which would have stopped).
    assert_eq!((summary["overflow_steps"].as_i64(), summary["skipped_steps"].as_i64()), (Some(1), Some(0)));
    assert!(weights_at(&run, 2) == weights_at(&run, 3), "the overflowed step 3 changed the parameters");
    assert!(weights_at(&run, 3) != weights_at(&run, 4), "step 4 applied no update");
    let scales = loss_scales(&run);
    let expected: Vec<(i64, f64)> = (1..=6).map(|step| (step, if step < 3 { 65536.0 } else { 32768.0 })).collect();
    assert_eq!(scales, expected);
    assert_eq!(summary["loss_scale"], 32768.0);
    assert_eq!(std::fs::read_to_string(run.join("latest")).unwrap(), "step-00000006");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_resumed_float16_run_keeps_its_loss_scale_and_equals_the_uninterrupted_run() {
    let dir = scratch("resume-f16");
    let config = tiny_config(&dir, 8, 4);
    let (whole, split) = (dir.join("whole"), dir.join("split"));
    // An overflow before the interruption moves the scale away from its initial value.
    let overflow = [("REFORMER_INJECT_OVERFLOW_AT_STEP", "2")];
    assert_success(&train_with_env(&config, &whole, &FLOAT16, &overflow));
    assert_success(&train_with_env(&config, &split, &[&FLOAT16[..], &["--steps", "4"]].concat(), &overflow));
    let resume = ["train", "--device", "cpu", "--resume", split.to_str().unwrap(), "--steps", "8"];
    assert_success(&reformer_with_env(&resume, &overflow));
    assert!(latest_weights(&whole) == latest_weights(&split), "weights after 8 steps differ");
    assert_eq!(metrics(&whole), metrics(&split));
    assert_eq!(loss_scales(&split).last(), Some(&(8, 32768.0)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_precision_is_recorded_in_config_json_and_kept_by_resume_and_generate() {
    let (dir, config, run) = tiny_run("precision", 2, 2);
    let out = train(&config, &run, &["--precision", "bf16", "--json"]);
    let summary = json_of(&out);
    assert_eq!(summary["precision"], "bf16");
    let recorded = std::fs::read_to_string(run.join("config.json")).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&recorded).unwrap();
    assert_eq!(cfg["train"]["precision"], "bf16");
    let resume = ["train", "--device", "cpu", "--resume", run.to_str().unwrap(), "--steps", "4", "--json"];
    let out = reformer(&resume);
    let summary = json_of(&out);
    assert_eq!((summary["steps"].as_i64(), summary["precision"].as_str()), (Some(4), Some("bf16")));
    assert_eq!(std::fs::read_to_string(run.join("config.json")).unwrap(), recorded);
    // Another precision on resume is refused in one line.
    let out = reformer(&[&resume[..], &["--precision", "f32"]].concat());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("--precision f32 differs from the run's bf16"), "{stderr}");
    // generate samples in the run's precision unless told otherwise.
    let precision_of = |extra: &[&str]| {
        let out = generate(&run, "3", extra);
        assert_success(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["precision"].clone()
    };
    assert_eq!(precision_of(&[]), "bf16");
    assert_eq!(precision_of(&["--no-cache"]), "bf16");
    assert_eq!(precision_of(&["--precision", "f32"]), "f32");
    // A run given no precision records float32.
    let plain = dir.join("plain");
    assert_success(&train(&config, &plain, &["--steps", "1"]));
    let cfg = common::read_json(&plain.join("config.json"));
    assert_eq!(cfg["train"]["precision"], "f32");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_precision_is_bf16_only_where_the_cpu_computes_it_and_config_json_records_the_outcome() {
    let version = String::from_utf8_lossy(&reformer(&["--version"]).stdout).to_string();
    let native = version.contains("cpu bfloat16: native");
    assert!(native || version.contains("cpu bfloat16: not native"), "{version}");
    let (dir, config, run) = tiny_run("auto-precision", 2, 2);
    // (what the run gets, the environment): a cap of oneDNN below AVX-512 BF16 means f32.
    let expected = if native { "bf16" } else { "f32" };
    for (name, env, expected) in [("run", vec![], expected), ("capped", vec![("ONEDNN_MAX_CPU_ISA", "AVX2")], "f32")] {
        let run = dir.join(name);
        let out = train_with_env(&config, &run, &["--precision", "auto", "--json"], &env);
        assert_success(&out);
        assert_eq!(json_of(&out)["precision"], expected, "{name}");
        assert_eq!(common::read_json(&run.join("config.json"))["train"]["precision"], expected, "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("precision: {expected} (auto: ")), "{name}: {stderr}");
    }
    // A resumed run asked for auto gets what auto means here: its own precision.
    let resume = ["train", "--device", "cpu", "--resume", run.to_str().unwrap(), "--steps", "3", "--precision", "auto"];
    assert_success(&reformer(&resume));
    // The enwik8 preset trains in auto, the others in float32.
    use reformer::precision::Precision;
    use reformer::run_config::RunConfig;
    assert_eq!(RunConfig::preset("enwik8-cpu").unwrap().train.precision, Precision::Auto);
    for preset in ["duplication", "duplication-4k", "enwik8-paper"] {
        assert_eq!(RunConfig::preset(preset).unwrap().train.precision, Precision::F32, "{preset}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run folder has one writer: a new run into a folder that holds one is refused (it
/// would mix into it), and while a run trains, a `--resume` of it from another process is
/// refused with the holder's pid.
#[test]
fn a_run_folder_has_one_writer() {
    let dir = scratch("writers");
    let run = dir.join("run");
    assert_success(&train(&tiny_config(&dir, 2, 2), &run, &[]));
    let again = train(&tiny_config(&dir, 2, 2), &run, &[]);
    common::assert_fails_saying(&again, "already holds a run: continue it with --resume");

    let long = dir.join("long");
    let base = ["train", "--device", "cpu", "--threads", "1", "--out", long.to_str().unwrap()];
    let config = tiny_config(&dir, 100_000, 100_000);
    let mut first = reformer_command(&base)
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !long.join("config.json").exists() {
        assert!(started.elapsed().as_secs() < 60, "the first run never wrote its config");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = reformer(&["train", "--device", "cpu", "--resume", long.to_str().unwrap(), "--steps", "1"]);
    first.kill().unwrap();
    let _ = first.wait();
    common::assert_fails_saying(&second, &format!("is in use by process {}", first.id()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// float16 gradients that overflow step after step stop the run with one line once the
/// loss scale falls below its floor, instead of skipping every step to a "Done" with a
/// scale of 0.
#[test]
fn persistent_float16_overflow_stops_the_run_with_one_line() {
    let (dir, config, run) = tiny_run("overflow-forever", 100, 10);
    let out = train_with_env(&config, &run, &FLOAT16, &[("REFORMER_INJECT_OVERFLOW_FROM_STEP", "2")]);
    assert!(!out.status.success(), "a run whose every step overflows must not end as done");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{stderr}"));
    // From 2^16, the 17th overflow (step 18) halves the scale to 1/2.
    assert!(error.contains("step 18: float16 gradients kept overflowing") && error.contains("below 1"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `train.partner_reach`, each validation logs one fraction per LSH layer (local
/// layers add none), each in [0, 1], and prints them on its line; a window as long as
/// the sequence (one chunk) reaches every partner.
#[test]
fn partner_reach_logs_one_fraction_per_lsh_layer_at_each_validation() {
    let dir = scratch("partner-reach");
    let run_with_chunk = |chunk_len: i64| {
        let overrides = serde_json::json!({
            // Layers LSH, local, LSH: two LSH layers.
            "model": {"n_layers": 3, "lsh": {"n_hashes": 2, "chunk_len": chunk_len}},
            "train": {"batch_size": 4, "steps": 4, "warmup_steps": 1, "log_every": 1, "eval_every": 2,
                      "eval_batches": 1, "partner_reach": true, "duplication": {"n_symbols": 16, "copy_len": 15}}
        });
        let config = common::write_tiny_config(dir.join(format!("config-{chunk_len}.json")), overrides);
        let run = dir.join(format!("run-{chunk_len}"));
        let out = train(&config, &run, &[]);
        assert_success(&out);
        let reach: Vec<Vec<f64>> = metrics(&run)
            .iter()
            .filter(|record| record.get("valid_loss").is_some())
            .map(|record| record["partner_reach"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
            .collect();
        (out, run, reach)
    };
    let (out, run, reach) = run_with_chunk(8);
    assert_eq!(reach.len(), 2, "validations at steps 2 and 4: {reach:?}");
    for layers in &reach {
        assert_eq!(layers.len(), 2, "{layers:?}");
        assert!(layers.iter().all(|f| (0.0..=1.0).contains(f)), "{layers:?}");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("partner reach per LSH layer ["));
    let svg = std::fs::read_to_string(run.join("curve.svg")).unwrap();
    assert!(svg.contains("LSH layer 1"), "curve.svg draws each layer's reach");
    // Sequences of 31 tokens in one chunk of 32: every key is in every query's window.
    let (_, _, whole) = run_with_chunk(32);
    assert!(whole.iter().all(|layers| layers == &[1.0, 1.0]), "{whole:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The 64K duplication preset trains as shipped: one sequence of 65,535 tokens per step
/// through reversible LSH layers, its second copy scored at validation.
#[test]
fn the_64k_duplication_preset_trains_and_validates() {
    let dir = scratch("preset-64k");
    let run = dir.join("run");
    let out = common::reformer(&[
        "train",
        "--preset",
        "duplication-64k",
        "--device",
        "cpu",
        "--steps",
        "2",
        "--set",
        "train.eval_every=2",
        "--set",
        "train.eval_batches=1",
        "--out",
        run.to_str().unwrap(),
        "--json",
    ]);
    assert_success(&out);
    let validations: Vec<_> = metrics(&run).into_iter().filter(|record| record.get("valid_loss").is_some()).collect();
    assert_eq!(validations.len(), 1, "{validations:?}");
    let accuracy = validations[0]["valid_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{accuracy}");
    let model = &common::read_json(&run.join("config.json"))["model"];
    assert_eq!(model["max_seq_len"], 65536);
    assert_eq!(model["execution"]["reversible"], true);
    let _ = std::fs::remove_dir_all(&dir);
}
