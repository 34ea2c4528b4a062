//! `reformer bench`: speed and memory of LSH against full attention as length grows,
//! and of whole training steps, each case in a fresh child process for clean memory.

mod args;
pub mod case;
pub mod memory_model;
pub mod plot;
pub mod precision;
pub mod steady;
mod suites;

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::precision::Precision;
pub use args::BenchArgs;
use case::{run_case, Case, CaseKind, Measurement};
use suites::{cases, preset_cases, skips_f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// One attention layer, forward + backward, over sequence length.
    Attention,
    /// Whole training steps of three reference configurations.
    Steps,
    /// Training steps at 2, 6, 12 and 24 layers, reversible against ordinary residuals.
    Depth,
    /// Chunked against unchunked feed-forward at long lengths (reversible layers).
    Ff,
    /// Per precision (f32, bf16 and f16 autocast): the lm4k step's time and memory, how
    /// exactly the reversible backward rebuilds each block's inputs over depth, and the
    /// loss a short duplication run reaches.
    Precision,
    /// Resident memory over 3000 reversible training steps (a leak shows as growth).
    Steady,
    All,
}

const GIB: f64 = (1u64 << 30) as f64;

/// The fp32 matmul rate of this device (a 2048² GEMM, median of 5), in FLOP/s.
pub fn matmul_flops(device: Device) -> f64 {
    const N: i64 = 2048;
    let a = Tensor::randn([N, N], (Kind::Float, device));
    let b = Tensor::randn([N, N], (Kind::Float, device));
    let mut secs = Vec::new();
    for i in 0..6 {
        let started = Instant::now();
        let _ = a.matmul(&b).sum(Kind::Float).double_value(&[]);
        if i > 0 {
            secs.push(started.elapsed().as_secs_f64());
        }
    }
    secs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    2.0 * (N * N * N) as f64 / secs[secs.len() / 2]
}

/// Runs one case in a child process of this binary; a crash (e.g. out of memory) is
/// reported as a status, not an error.
fn run_in_child(case: &Case, device: Device, threads: Option<usize>) -> Result<(String, Measurement)> {
    let exe = std::env::current_exe().context("cannot find the reformer binary")?;
    let mut command = Command::new(exe);
    command.arg("bench").arg("--case").arg(serde_json::to_string(case)?).arg("--device").arg(device_arg(device));
    if let Some(threads) = threads {
        command.arg("--threads").arg(threads.to_string());
    }
    let output = command.output().context("cannot start a bench child process")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let status = if stderr.contains("out of memory") || output.status.code().is_none() { "oom" } else { "failed" };
        eprintln!("  {} at T={}: {status}: {}", case.label, case.seq_len, stderr.lines().last().unwrap_or(""));
        return Ok((status.into(), Measurement::default()));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("bench child printed nothing")?;
    Ok(("ok".into(), serde_json::from_str(line).context("bench child printed a bad result")?))
}

/// `device` as `--device` takes it.
pub(super) fn device_arg(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

pub fn run(opts: BenchArgs) -> Result<()> {
    let device = opts.run.setup()?;
    if let Some(spec) = &opts.case {
        let case: Case = serde_json::from_str(spec).context("bad --case JSON")?;
        println!("{}", serde_json::to_string(&run_case(&case, device)?)?);
        return Ok(());
    }
    if !opts.from.is_empty() {
        return report_from(&opts);
    }
    if opts.suite == Suite::Steady {
        println!("{:>6} {:>10}", "step", "RSS KiB");
        for (step, rss) in steady::rss_over_steps(3000, device) {
            println!("{step:>6} {rss:>10}");
        }
        return Ok(());
    }
    let cases = match &opts.preset {
        Some(name) => preset_cases(name, opts.lengths.as_deref(), opts.steps)?,
        None if opts.lengths.is_some() && !matches!(opts.suite, Suite::Attention | Suite::All) => {
            bail!("--lengths applies to the attention suite and to --preset, not to --suite {:?}", opts.suite)
        }
        None => cases(&opts, device),
    };
    // `--precision` for every case but the precision suite's own, which sets each.
    let cases: Vec<Case> = cases
        .into_iter()
        .map(|case| if case.suite == "precision" { case } else { case.in_precision(opts.precision) })
        .map(|mut case| {
            case.model.execution.fused_lsh &= !opts.batched_lsh;
            case
        })
        .collect();
    let peak = matmul_flops(device);
    eprintln!("device {}: fp32 matmul {:.1} GFLOP/s", crate::device::describe(device), peak / 1e9);
    let mut progress = crate::progress::Progress::new("bench", cases.len() as u64);
    let mut rows = Vec::new();
    let available = match device {
        Device::Cuda(index) => crate::device::cuda_free_bytes(index).ok().map(|free| free as f64),
        _ => memory_model::available_bytes(),
    };
    for (i, case) in cases.iter().enumerate() {
        let predicted = memory_model::predicted_bytes(case, case.lsh_path(device).starts_with("fused"));
        let (status, m) = match available {
            Some(available) if predicted > available => {
                eprintln!(
                    "  {} at T={}: skipped: predicted {:.1} GiB, {:.1} GiB available",
                    case.label,
                    case.seq_len,
                    predicted / GIB,
                    available / GIB
                );
                ("skipped".to_string(), Measurement::default())
            }
            _ => run_in_child(case, device, opts.run.threads)?,
        };
        let flops = case.flops_per_token();
        let utilization = if status == "ok" { flops * m.tokens_per_sec / peak } else { 0.0 };
        rows.push(json!({
            "suite": case.suite, "label": case.label, "attention": case.attention(),
            "n_hashes": case.model.lsh.n_hashes, "seq_len": case.seq_len, "batch_size": case.batch_size,
            "n_layers": if case.kind == CaseKind::Layer { 1 } else { case.model.n_layers }, "reversible": case.model.execution.reversible,
            "ff_chunked": case.model.execution.ff_chunk_len.is_some(), "precision": case.precision, "lsh_path": case.lsh_path(device), "status": status,
            "ms_per_step": m.ms_per_step, "us_per_token": m.us_per_token, "tokens_per_sec": m.tokens_per_sec,
            "peak_bytes": m.peak_bytes, "predicted_bytes": predicted, "flops_per_token": flops, "utilization": utilization, "step_ms": m.step_ms,
        }));
        progress.update(i as u64 + 1, format!("{} T={}", case.label, case.seq_len));
    }
    progress.finish();
    print_table(&rows);
    let precision_report = match opts.suite {
        Suite::Precision | Suite::All if opts.preset.is_none() => run_precision(&opts, device)?,
        _ => json!(null),
    };
    write_plot(&rows, &opts)?;
    if let Some(path) = &opts.json {
        let report = json!({"machine": machine(device), "matmul_flops": peak, "cases": rows,
            "precision": precision_report});
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    check_some_measured(&rows)
}

/// An error when cases ran and every one of them failed (a case predicted not to fit is
/// skipped, not failed).
fn check_some_measured(rows: &[serde_json::Value]) -> Result<()> {
    let count = |status: &[&str]| rows.iter().filter(|r| status.iter().any(|s| r["status"] == *s)).count();
    let failed = count(&["failed", "oom"]);
    if failed > 0 && count(&["ok"]) == 0 {
        bail!("every case that ran failed ({failed} of {}): see the lines above", rows.len());
    }
    Ok(())
}

/// The figure of `rows` when `--plot` asks for one.
fn write_plot(rows: &[serde_json::Value], opts: &BenchArgs) -> Result<()> {
    if let Some(path) = &opts.plot {
        plot::write_svg(rows, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The table and figure of earlier JSON reports, merged.
fn report_from(opts: &BenchArgs) -> Result<()> {
    let mut rows = Vec::new();
    for path in &opts.from {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read bench report {}", path.display()))?;
        let report: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not a bench JSON report", path.display()))?;
        let cases = report["cases"].as_array().with_context(|| format!("{} has no \"cases\" array", path.display()))?;
        rows.extend(cases.iter().cloned());
    }
    print_table(&rows);
    write_plot(&rows, opts)?;
    Ok(())
}

/// The precision suite's measurements beyond step time and memory: how exactly the
/// reversible backward rebuilds each block's inputs over depth, and (`--suite precision`
/// only, not `all`) what a short duplication run reaches, per precision. Printed, and
/// returned for the JSON report.
fn run_precision(opts: &BenchArgs, device: Device) -> Result<serde_json::Value> {
    println!("{:<8} {:<14} {:>22} {:>22}", "layers", "arithmetic", "first block rel. error", "worst block rel. error");
    let mut reconstruction = Vec::new();
    for arithmetic in precision::ARITHMETICS {
        for n_layers in [12, 24] {
            let r = precision::measure(n_layers, arithmetic, 1024, device);
            println!("{:<8} {:<14} {:>22.3e} {:>22.3e}", r.n_layers, r.arithmetic, r.first_block, r.worst_block);
            reconstruction.push(r);
        }
    }
    if opts.suite != Suite::Precision {
        return Ok(json!({"reconstruction": reconstruction}));
    }
    println!("{:<10} {:>6} {:>12} {:>14} {:>10}", "precision", "steps", "valid loss", "accuracy", "seconds");
    let mut duplication = Vec::new();
    for p in [Precision::F32, Precision::Bf16, Precision::F16] {
        if p == Precision::F16 && skips_f16(opts.quick_sizes(device), device) {
            println!("{:<10} skipped at CPU sizes (float16 is emulated on most CPUs): --full runs it", p.name());
            continue;
        }
        let run = precision::duplication_run(p, device, opts.run.threads)?;
        println!(
            "{:<10} {:>6} {:>12.4} {:>13.1}% {:>10.1}",
            p.name(),
            run.steps,
            run.valid_loss,
            100.0 * run.valid_accuracy,
            run.elapsed_secs
        );
        duplication.push(run);
    }
    Ok(json!({"reconstruction": reconstruction, "duplication": duplication}))
}

fn print_table(rows: &[serde_json::Value]) {
    println!(
        "{:<10} {:<12} {:>7} {:>6} {:>7} {:>10} {:>9} {:>11} {:>10} {:>10} {:>6}  LSH path",
        "suite", "case", "T", "batch", "layers", "ms/step", "us/token", "tokens/s", "peak MiB", "pred. MiB", "util"
    );
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        if r["status"] != "ok" {
            println!(
                "{:<10} {:<12} {:>7} {:>6} {:>7} {:>42} {:>10.0}",
                r["suite"].as_str().unwrap_or(""),
                r["label"].as_str().unwrap_or(""),
                r["seq_len"].as_i64().unwrap_or(0),
                r["batch_size"].as_i64().unwrap_or(0),
                r["n_layers"].as_i64().unwrap_or(0),
                r["status"].as_str().unwrap_or(""),
                f("predicted_bytes") / (1 << 20) as f64
            );
            continue;
        }
        println!(
            "{:<10} {:<12} {:>7} {:>6} {:>7} {:>10.1} {:>9.2} {:>11.0} {:>10.1} {:>10.0} {:>5.1}%  {}",
            r["suite"].as_str().unwrap_or(""),
            r["label"].as_str().unwrap_or(""),
            r["seq_len"].as_i64().unwrap_or(0),
            r["batch_size"].as_i64().unwrap_or(0),
            r["n_layers"].as_i64().unwrap_or(0),
            f("ms_per_step"),
            f("us_per_token"),
            f("tokens_per_sec"),
            f("peak_bytes") / (1 << 20) as f64,
            f("predicted_bytes") / (1 << 20) as f64,
            100.0 * f("utilization"),
            r["lsh_path"].as_str().unwrap_or("-")
        );
    }
}

fn machine(device: Device) -> serde_json::Value {
    let commit =
        Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok().filter(|o| o.status.success());
    json!({
        "device": crate::device::describe(device),
        "threads": tch::get_num_threads(),
        "libtorch": crate::LIBTORCH_VERSION,
        "cuda_available": tch::Cuda::is_available(),
        "git_commit": commit.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        "allocator": crate::allocator::describe(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bench_fails_when_no_case_that_ran_succeeded() {
        let rows =
            |statuses: &[&str]| -> Vec<serde_json::Value> { statuses.iter().map(|s| json!({ "status": s })).collect() };
        assert!(check_some_measured(&rows(&["failed", "oom", "skipped"])).is_err());
        assert!(check_some_measured(&rows(&["failed", "ok"])).is_ok());
        assert!(check_some_measured(&rows(&["skipped", "skipped"])).is_ok());
    }
}
