//! `reformer bench`: speed and memory of LSH against full attention as length grows,
//! and of whole training steps, each case in a fresh child process for clean memory.

mod args;
pub mod case;
pub mod figure;
pub mod memory_model;
mod plans;
pub mod precision;
pub mod report;
pub mod steady;
mod suites;

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use crate::precision::Precision;
pub use args::BenchArgs;
use case::{run_case, Case, Measurement};
use report::{
    check_some_measured, print_breakdowns, print_table, BenchReport, CaseRow, Machine, PrecisionReport, Status,
};
use suites::{cases, config_cases, skips_f16};

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
fn run_in_child(case: &Case, device: Device, threads: Option<usize>) -> Result<(Status, Measurement)> {
    let exe = std::env::current_exe().context("cannot find the reformer binary")?;
    let mut command = Command::new(exe);
    command.arg("bench").arg("--case").arg(serde_json::to_string(case)?).arg("--device").arg(device_arg(device));
    if let Some(threads) = threads {
        command.arg("--threads").arg(threads.to_string());
    }
    let output = command.output().context("cannot start a bench child process")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let oom = stderr.contains("out of memory") || output.status.code().is_none();
        let status = if oom { Status::Oom } else { Status::Failed };
        eprintln!("  {} at T={}: {}: {}", case.label, case.seq_len, status.name(), stderr.lines().last().unwrap_or(""));
        return Ok((status, Measurement::default()));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("bench child printed nothing")?;
    Ok((Status::Ok, serde_json::from_str(line).context("bench child printed a bad result")?))
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
    let cases = chosen_cases(&opts, device)?;
    let peak = matmul_flops(device);
    eprintln!("device {}: fp32 matmul {:.1} GFLOP/s", crate::device::describe(device), peak / 1e9);
    let rows = measure(&cases, &opts, device, peak)?;
    print_table(&rows);
    if let (Some(budget), Some((name, cfg))) = (opts.memory_budget, opts.measured_config()?) {
        plans::print_summary(&rows, &name, &cfg, budget, device)?;
    }
    if opts.explain {
        print_breakdowns(&rows);
    }
    let precision = match opts.suite {
        Suite::Precision | Suite::All if opts.preset.is_none() && opts.config.is_none() => {
            Some(run_precision(&opts, device)?)
        }
        _ => None,
    };
    write_plot(&rows, &opts)?;
    let report = BenchReport { machine: Machine::of(device), matmul_flops: peak, cases: rows, precision };
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    check_some_measured(&report.cases)
}

/// The cases of `--preset` or of the suites, in `--precision` (but the precision suite's
/// own, which sets each) and on the batched LSH path with `--batched-lsh`.
fn chosen_cases(opts: &BenchArgs, device: Device) -> Result<Vec<Case>> {
    let cases = match (opts.measured_config()?, opts.memory_budget) {
        (Some((name, cfg)), Some(budget)) => {
            let lengths = opts.lengths.clone().unwrap_or_else(|| vec![cfg.training_len()]);
            plans::plan_cases(&name, &cfg, &lengths, opts.steps, budget, device, opts.all_plans)?
        }
        (Some((name, cfg)), None) => config_cases(&name, &cfg, opts.lengths.as_deref(), opts.steps)?,
        (None, _) if opts.lengths.is_some() && !matches!(opts.suite, Suite::Attention | Suite::All) => {
            bail!(
                "--lengths applies to the attention suite and to --preset / --config, not to --suite {:?}",
                opts.suite
            )
        }
        (None, _) => cases(opts, device),
    };
    Ok(cases
        .into_iter()
        .map(|case| if case.suite == "precision" { case } else { case.in_precision(opts.precision.resolve(device)) })
        .map(|mut case| {
            case.model.execution.fused_lsh &= !opts.batched_lsh;
            case
        })
        .collect())
}

/// Runs each case in a child process, unless the memory model predicts it does not fit
/// (then it is skipped), with a progress bar; `peak` is the device's matmul rate.
fn measure(cases: &[Case], opts: &BenchArgs, device: Device, peak: f64) -> Result<Vec<CaseRow>> {
    let mut progress = crate::progress::Progress::new("bench", cases.len() as u64);
    let mut rows = Vec::new();
    let available = match device {
        Device::Cuda(index) => crate::device::cuda_free_bytes(index).ok().map(|free| free as f64),
        _ => memory_model::available_bytes(),
    };
    for (i, case) in cases.iter().enumerate() {
        let predicted_terms = memory_model::breakdown(case, case.lsh_path(device).starts_with("fused"));
        let predicted = predicted_terms.total();
        let (status, measured) = match available {
            Some(available) if predicted > available => {
                eprintln!(
                    "  {} at T={}: skipped: predicted {:.1} GiB, {:.1} GiB available",
                    case.label,
                    case.seq_len,
                    predicted / GIB,
                    available / GIB
                );
                (Status::Skipped, Measurement::default())
            }
            _ => run_in_child(case, device, opts.run.threads)?,
        };
        rows.push(CaseRow::new(case, device, status, measured, predicted_terms, peak));
        progress.update(i as u64 + 1, format!("{} T={}", case.label, case.seq_len));
    }
    progress.finish();
    Ok(rows)
}

/// The figure of `rows` when `--plot` asks for one.
fn write_plot(rows: &[CaseRow], opts: &BenchArgs) -> Result<()> {
    if let Some(path) = &opts.plot {
        figure::write_svg(rows, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The table and figure of earlier JSON reports, merged.
fn report_from(opts: &BenchArgs) -> Result<()> {
    let mut rows = Vec::new();
    for path in &opts.from {
        rows.extend(BenchReport::read(path)?.cases);
    }
    print_table(&rows);
    if opts.explain {
        print_breakdowns(&rows);
    }
    write_plot(&rows, opts)?;
    Ok(())
}

/// The precision suite's measurements beyond step time and memory: how exactly the
/// reversible backward rebuilds each block's inputs over depth, and (`--suite precision`
/// only, not `all`) what a short duplication run reaches, per precision. Printed, and
/// returned for the JSON report.
fn run_precision(opts: &BenchArgs, device: Device) -> Result<PrecisionReport> {
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
        return Ok(PrecisionReport { reconstruction, duplication: None });
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
    Ok(PrecisionReport { reconstruction, duplication: Some(duplication) })
}
