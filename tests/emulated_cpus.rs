//! The binary on CPUs older than this one, emulated by QEMU's user-mode emulator
//! (`scripts/setup-qemu.sh` unpacks Debian's qemu-user-static): Haswell (AVX2, no
//! AVX-512: libtorch refuses oneDNN's matmul there) and Westmere (no AVX at all). On each,
//! a tiny `reformer train` and a `generate` from its checkpoint finish, the paths chosen
//! are the ones that CPU runs, and the losses equal the native run's within 1e-4
//! relative. Where the emulator cannot be had the test says why and passes, except under
//! `CI=true`, where that fails it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const TRAIN: [&str; 15] = [
    "train",
    "--steps",
    "2",
    "--set",
    "model.max_seq_len=128",
    "--set",
    "train.duplication.copy_len=63",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.eval_every=2",
    "--set",
    "train.eval_batches=1",
    "--threads",
    "1",
];

/// The emulator, or None (with the reason printed) where it cannot be set up outside CI.
fn emulator() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-qemu.sh");
    let out = Command::new("bash").arg(&script).output().expect("bash runs");
    if out.status.success() {
        return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(std::env::var("CI").as_deref() != Ok("true"), "under CI the emulator must be available: {why}");
    eprintln!("skipped: no x86-64 emulator ({})", why.trim());
    None
}

/// Runs the binary (under `cpu` when given) and returns its standard output; panics
/// with its error output if it fails.
fn reformer(cpu: Option<(&Path, &str)>, args: &[&str]) -> String {
    let out = match cpu {
        Some((emulator, model)) => {
            let mut command = Command::new(emulator);
            common::run(common::user_environment(command.args(["-cpu", model, common::BINARY]).args(args)))
        }
        None => common::reformer(args),
    };
    let label = cpu.map_or("native", |c| c.1);
    assert!(out.status.success(), "{label}: reformer {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The training loss and the validation loss of a run folder's last step.
fn losses(run: &Path) -> [f64; 2] {
    let rows = common::metrics(run);
    let find = |key: &str| rows.iter().rev().find_map(|r| r[key].as_f64()).unwrap_or_else(|| panic!("no {key}"));
    [find("loss"), find("valid_loss")]
}

/// A tiny training run and a generation from it under `cpu`: the training and
/// validation losses, and what `--version` says of the CPU paths.
fn train_and_generate(cpu: Option<(&Path, &str)>, folder: &Path) -> ([f64; 2], String) {
    let out = folder.to_str().unwrap();
    reformer(cpu, &[&TRAIN[..], &["--out", out]].concat());
    let prompt = "\u{1}\u{2}\u{3}\u{4}";
    let generated = reformer(
        cpu,
        &["generate", "--checkpoint", out, "--prompt", prompt, "--greedy", "--max-new-tokens", "8", "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(generated.trim()).unwrap();
    assert_eq!(report["new_tokens"], 8, "{generated}");
    (losses(folder), reformer(cpu, &["--version"]))
}

#[test]
fn train_and_generate_on_haswell_and_westmere_match_the_native_run() {
    let Some(emulator) = emulator() else { return };
    let scratch = common::fresh_path("runs");
    let (native, _) = train_and_generate(None, &scratch.join("native"));
    // The two emulated CPUs side by side: each emulator runs on one core.
    let runs: Vec<(&str, ([f64; 2], String))> = std::thread::scope(|s| {
        let handles: Vec<_> = ["Haswell", "Westmere"]
            .map(|model| {
                let (emulator, folder) = (&emulator, scratch.join(model));
                (model, s.spawn(move || train_and_generate(Some((emulator, model)), &folder)))
            })
            .into_iter()
            .collect();
        handles.into_iter().map(|(m, h)| (m, h.join().unwrap())).collect()
    });
    for (model, (emulated, version)) in runs {
        let expected_isa = if model == "Haswell" { "avx2" } else { "baseline" };
        assert!(version.contains("cpu linear layers (float32): libtorch linear"), "{model}:\n{version}");
        assert!(version.contains(&format!("cpu LSH kernel: {expected_isa},")), "{model}:\n{version}");
        assert!(version.contains("cpu bfloat16: not native (--precision auto: f32)"), "{model}:\n{version}");
        for (what, (a, b)) in ["training loss", "validation loss"].iter().zip(emulated.iter().zip(&native)) {
            let relative = (a - b).abs() / b.abs();
            assert!(relative <= 1e-4, "{model}: {what} {a} against native {b} ({relative:e} relative)");
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
