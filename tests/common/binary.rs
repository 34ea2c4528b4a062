//! The `reformer` binary as the tests run it: as a user starts it, to its end, and never
//! panicking (a user's mistake is one line, never a panic).

use std::path::Path;
use std::process::{Command, Output};

/// The binary's path, for a command that starts it through another program (a launcher,
/// an emulator).
pub const BINARY: &str = env!("CARGO_BIN_EXE_reformer");

/// `reformer ARGS` as a user starts it (see [`user_environment`]).
pub fn reformer_command(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    user_environment(command.args(args));
    command
}

/// `command` in the environment of a user's shell: without RUST_BACKTRACE (what the user
/// sees on stderr is what the tests check) and without a launcher's WORLD_SIZE.
pub fn user_environment(command: &mut Command) -> &mut Command {
    command.env_remove("RUST_BACKTRACE").env_remove("WORLD_SIZE")
}

/// Runs `command` to its end; a panic in it fails the test.
pub fn run(command: &mut Command) -> Output {
    let out = command.output().expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

/// `reformer ARGS`, run to its end.
pub fn reformer(args: &[&str]) -> Output {
    run(&mut reformer_command(args))
}

/// `reformer ARGS` with extra environment variables (the fault-injection hooks).
pub fn reformer_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    run(reformer_command(args).envs(env.iter().copied()))
}

/// `reformer train` on CPU with `config`, writing to `run`, plus `extra` arguments.
pub fn train_command(config: &Path, run: &Path, extra: &[&str]) -> Command {
    let base = ["train", "--device", "cpu", "--config", config.to_str().unwrap(), "--out", run.to_str().unwrap()];
    reformer_command(&[&base[..], extra].concat())
}

/// `reformer train` (see [`train_command`]), run to its end.
pub fn train(config: &Path, run_dir: &Path, extra: &[&str]) -> Output {
    run(&mut train_command(config, run_dir, extra))
}

pub fn assert_success(out: &Output) {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The one JSON object that a successful `--json` command printed.
pub fn json_of(out: &Output) -> serde_json::Value {
    assert_success(out);
    serde_json::from_slice(&out.stdout).expect("--json prints one object")
}

/// `out` is a failure whose stderr says `needle`.
pub fn assert_fails_saying(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should have failed: {stderr}");
    assert!(stderr.contains(needle), "expected '{needle}' in: {stderr}");
}
