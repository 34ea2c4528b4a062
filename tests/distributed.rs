//! Data-parallel training through c10d with Gloo, two worker processes on the loopback:
//! the same parameters as one process with the whole batch, ranks that stay equal, one
//! writer, a dead worker or an unreachable master ending the run with a clear error, and
//! resuming with another number of workers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_success, run, scratch, train_command};
use reformer::run_dir::load_model;
use tch::Device;

/// A small duplication run without dropout (so that one process with batch 2B draws the
/// same randomness as two with B each): LSH and local attention, reversible layers.
fn tiny_config(dir: &Path, batch_size: i64, steps: i64) -> PathBuf {
    let overrides = serde_json::json!({
        "train": {
            "batch_size": batch_size, "steps": steps, "lr": 3e-3, "warmup_steps": 2, "schedule": "rsqrt",
            "log_every": 1, "eval_every": 2, "eval_batches": 2, "keep_last": 2
        }
    });
    common::write_tiny_config(dir.join(format!("config-b{batch_size}.json")), overrides)
}

fn training_losses(run: &Path) -> Vec<(i64, f64)> {
    common::metrics(run).iter().filter_map(|r| Some((r["step"].as_i64()?, r.get("loss")?.as_f64()?))).collect()
}

#[test]
fn two_workers_train_the_parameters_of_one_process_with_the_whole_batch() {
    let dir = scratch("equal");
    let (single, pair) = (dir.join("single"), dir.join("pair"));
    assert_success(&common::train(&tiny_config(&dir, 4, 4), &single, &[]));
    assert_success(&common::train(&tiny_config(&dir, 2, 4), &pair, &["--nproc", "2"]));

    let (expected, actual) = (training_losses(&single), training_losses(&pair));
    assert_eq!(expected.len(), 4);
    assert_eq!(actual.len(), 4, "one record per step: only rank 0 writes metrics");
    for ((step, e), (_, a)) in expected.iter().zip(&actual) {
        assert!((e - a).abs() <= 1e-5 * e.abs(), "step {step}: loss {a} with two workers, {e} with one");
    }
    let (single_vs, _, _) = load_model(&single, Device::Cpu).unwrap();
    let (pair_vs, _, _) = load_model(&pair, Device::Cpu).unwrap();
    let pair_vars = pair_vs.variables();
    for (name, e) in single_vs.variables() {
        let a = &pair_vars[&name];
        let gap = (a - &e).abs().max().double_value(&[]);
        let scale = e.abs().max().double_value(&[]).max(1e-3);
        assert!(gap <= 1e-4 * scale, "{name}: two workers differ from one by {gap:e} (scale {scale:e})");
    }
    // The validation sequences are the same whatever the number of workers.
    let valid = |run: &Path| -> Vec<f64> {
        common::metrics(run).iter().filter_map(|r| r.get("valid_loss")?.as_f64()).collect()
    };
    let (e, a) = (valid(&single), valid(&pair));
    assert_eq!(e.len(), a.len());
    for (e, a) in e.iter().zip(&a) {
        assert!((e - a).abs() <= 1e-5 * e.abs(), "validation loss {a} with two workers, {e} with one");
    }
}

#[test]
fn ranks_whose_parameters_differ_are_stopped() {
    let dir = scratch("diverge");
    let mut command = train_command(&tiny_config(&dir, 2, 6), &dir.join("run"), &["--nproc", "2"]);
    command.env("REFORMER_INJECT_DIVERGENCE_AT_STEP", "3");
    let out = run(&mut command);
    assert!(!out.status.success(), "a run whose ranks diverged must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("parameters differ between ranks"), "{stderr}");
    // The check runs at every logged step: the run stops at step 3, not later.
    assert!(training_losses(&dir.join("run")).iter().all(|(step, _)| *step < 3), "{stderr}");
}

/// Two workers started as a launcher would, with their own environment variables.
fn launch(config: &Path, run: &Path, port: u16, rank: i64, timeout: &str) -> std::process::Child {
    let mut command = train_command(config, run, &["--dist-timeout", timeout]);
    command
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command.spawn().unwrap()
}

/// Waits (at most a minute) until the run in `run_dir` has logged three records.
fn wait_until_training(run_dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(true, |m| m.lines().count() < 3) {
        assert!(Instant::now() < deadline, "the workers never started training");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The exit status of `child`, which must come within `limit` (else: `late`).
fn exit_within(child: &mut std::process::Child, limit: Duration, late: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < limit, "{late}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_dead_worker_stops_the_other_with_an_error_within_the_timeout() {
    let dir = scratch("dead");
    let config = tiny_config(&dir, 2, 1_000_000);
    let run_dir = dir.join("run");
    let port = free_port();
    let mut main = launch(&config, &run_dir, port, 0, "10");
    let mut other = launch(&config, &run_dir, port, 1, "10");
    // Wait until the pair trains, then kill rank 1 without warning.
    wait_until_training(&run_dir);
    other.kill().unwrap();
    other.wait().unwrap();
    let status = exit_within(&mut main, Duration::from_secs(40), "rank 0 still runs 40 s after rank 1 died");
    let stderr = std::io::read_to_string(main.stderr.take().unwrap()).unwrap();
    assert!(!status.success(), "rank 0 must fail once rank 1 is gone");
    assert!(stderr.contains("failed"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_unreachable_master_is_one_clear_line() {
    let dir = scratch("unreachable");
    let mut command = train_command(&tiny_config(&dir, 2, 2), &dir.join("run"), &["--dist-timeout", "3"]);
    command
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "no-such-host.invalid")
        .env("MASTER_PORT", "29555");
    let started = Instant::now();
    let out = run(&mut command);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains("cannot join the process group at no-such-host.invalid:29555 as rank 1 of 2"),
        "{stderr}"
    );

    let mut command = train_command(&tiny_config(&dir, 2, 2), &dir.join("run"), &[]);
    command.env("WORLD_SIZE", "2");
    let stderr = String::from_utf8_lossy(&run(&mut command).stderr).into_owned();
    assert!(stderr.contains("WORLD_SIZE is set but RANK is not"), "{stderr}");
}

#[test]
fn a_run_resumes_with_another_number_of_workers() {
    let dir = scratch("resume");
    let run_dir = dir.join("run");
    assert_success(&common::train(&tiny_config(&dir, 2, 2), &run_dir, &["--nproc", "2"]));
    let resume = |extra: &[&str]| {
        run(common::reformer_command(&["train", "--device", "cpu", "--resume", run_dir.to_str().unwrap()]).args(extra))
    };
    assert_success(&resume(&["--steps", "4"]));
    assert_success(&resume(&["--steps", "6", "--nproc", "2"]));
    let steps: Vec<i64> = training_losses(&run_dir).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
}

/// torchrun from the PyTorch wheel the build uses (`.libtorch` is its `torch` folder).
fn torchrun() -> Option<PathBuf> {
    let torch = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join(".libtorch")).ok()?;
    let bin = torch.ancestors().nth(4)?.join("bin").join("torchrun");
    bin.exists().then_some(bin)
}

#[test]
fn workers_started_by_torchrun_join_its_store() {
    let Some(torchrun) = torchrun() else {
        eprintln!("no torchrun beside the libtorch in use (LIBTORCH set?): nothing to check");
        return;
    };
    let dir = scratch("torchrun");
    let run_dir = dir.join("run");
    let config = tiny_config(&dir, 2, 2);
    let mut command = Command::new(torchrun);
    command
        .args(["--no-python", "--nproc-per-node", "2", "--master-port", &free_port().to_string()])
        .arg(common::BINARY)
        .args(["train", "--device", "cpu", "--json", "--config", config.to_str().unwrap(), "--out"])
        .arg(&run_dir);
    let out = run(common::user_environment(&mut command));
    assert_success(&out);
    let summary: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(summary["world_size"], 2);
    assert_eq!(training_losses(&run_dir).len(), 2, "one record per step: only rank 0 writes metrics");
}

#[test]
fn nccl_on_the_cpu_is_refused_with_the_reason() {
    let dir = scratch("nccl");
    let mut command = train_command(&tiny_config(&dir, 2, 2), &dir.join("run"), &["--dist-backend", "nccl"]);
    command.env("RANK", "0").env("WORLD_SIZE", "1").env("MASTER_PORT", free_port().to_string());
    let out = run(&mut command);
    common::assert_fails_saying(&out, "nccl backend reduces CUDA tensors only");
}

#[test]
fn one_worker_group_trains_as_a_single_process() {
    // A group of one takes every collective path (broadcast, all-reduce, agreement check).
    let dir = scratch("one");
    let (single, group) = (dir.join("single"), dir.join("group"));
    assert_success(&common::train(&tiny_config(&dir, 2, 3), &single, &[]));
    let mut command = train_command(&tiny_config(&dir, 2, 3), &group, &[]);
    command
        .env("RANK", "0")
        .env("WORLD_SIZE", "1")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port().to_string());
    assert_success(&run(&mut command));
    assert_eq!(training_losses(&single), training_losses(&group));
}

#[test]
fn an_interrupt_to_nproc_stops_every_worker_at_one_step_and_saves() {
    let dir = scratch("interrupt");
    let run_dir = dir.join("run");
    let mut command = train_command(&tiny_config(&dir, 2, 1_000_000), &run_dir, &["--nproc", "2"]);
    let mut parent = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_until_training(&run_dir);
    let signal = Command::new("kill").args(["-INT", &parent.id().to_string()]).status().unwrap();
    assert!(signal.success());
    let status = exit_within(&mut parent, Duration::from_secs(60), "the workers did not stop after the interrupt");
    let stderr = std::io::read_to_string(parent.stderr.take().unwrap()).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("stopping at the interrupt"), "{stderr}");
    let latest = std::fs::read_to_string(run_dir.join("latest")).expect("rank 0 saved a checkpoint");
    assert!(latest.trim().starts_with("step-"), "{latest}");
}
