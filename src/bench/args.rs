//! The command line of `reformer bench`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tch::Device;

use super::Suite;
use crate::arg_values::at_least_one;
use crate::device::RunArgs;
use crate::memory_plan::{parse_budget, MemoryBudget};
use crate::precision::Precision;
use crate::run_config::RunConfig;

/// Measure speed and memory: LSH against full attention over length, training steps.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Which measurements to run.
    #[arg(long, value_enum, default_value = "all")]
    pub suite: Suite,
    /// Timed steps per case (after warm-up); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = at_least_one::<usize>)]
    pub steps: usize,
    /// Smaller sizes, for a run of a few minutes on a CPU (the default on a CPU).
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// The full sizes even on a CPU (the default on a GPU).
    #[arg(long)]
    pub full: bool,
    /// Measure training steps of a shipped preset's model (and of the same model with
    /// full attention) instead of the suites, the first step timed (no warm-up):
    /// duplication, duplication-1k, duplication-4k, duplication-16k, duplication-64k, enwik8-cpu, enwik8-paper.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// Measure training steps of the model in this configuration file instead of a
    /// preset's (the layout of `config.json`: a run folder's, e.g. an imported model's),
    /// and of the same model with full attention.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Changes to the --preset or --config configuration, as `train --set` takes them
    /// (e.g. `model.max_seq_len=131072`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Sequence lengths of the attention suite (or of --preset / --config), comma-separated (e.g.
    /// 1024,4096,65536).
    #[arg(long, value_delimiter = ',', value_parser = at_least_one::<i64>)]
    pub lengths: Option<Vec<i64>>,
    /// With --preset or --config: measure the step the memory planner chooses for this
    /// budget (8GiB, 512MiB, 8G, or auto; as `train --memory-budget`) at each length, and
    /// say whether the whole process stayed under it.
    #[arg(long, value_name = "SIZE", value_parser = parse_budget)]
    pub memory_budget: Option<MemoryBudget>,
    /// With --memory-budget: measure every combination of the execution settings
    /// instead, and set the planner's choice (at this budget, and at 1.1, 1.5 and 3 times
    /// the smallest peak it predicts) beside the fastest step that stayed under each.
    #[arg(long, requires = "memory_budget")]
    pub all_plans: bool,
    /// After the table, each case's predicted peak memory term by term (parameters,
    /// gradients, optimizer state, kept activations, attention working set, residual
    /// streams, loss, libtorch overhead) beside its measured peak.
    #[arg(long)]
    pub explain: bool,
    /// Write every raw number and the machine to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the figure (time per token over length, memory over depth) to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Tabulate (and with --plot draw) earlier --json reports, comma-separated, instead
    /// of measuring.
    #[arg(long, value_delimiter = ',')]
    pub from: Vec<PathBuf>,
    /// Arithmetic of the measured passes: f32, or bf16 / f16 autocast.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// LSH layers on the batched path (`model.execution.fused_lsh = false`) instead of the fused kernel:
    /// for measuring one against the other.
    #[arg(long)]
    pub batched_lsh: bool,
    /// Run one case given as JSON and print its result (used by the suites, which
    /// run each case in a fresh process).
    #[arg(long, hide = true)]
    pub case: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

impl BenchArgs {
    /// The configuration whose model `--preset` or `--config` measures, with `--set`
    /// applied and validated; None for the suites.
    pub fn measured_config(&self) -> Result<Option<(String, RunConfig)>> {
        let (label, base) = match (&self.preset, &self.config) {
            (Some(name), _) => (name.clone(), RunConfig::preset(name)?),
            (None, Some(path)) => (config_label(path), RunConfig::from_file(path)?),
            (None, None) if !self.set.is_empty() => bail!("--set changes the --preset or --config model: give one"),
            (None, None) if self.memory_budget.is_some() => {
                bail!("--memory-budget plans the --preset or --config model's step: give one")
            }
            (None, None) => return Ok(None),
        };
        let cfg = base.with_overrides(&self.set)?;
        cfg.model.validate().context("the measured model")?;
        Ok(Some((label, cfg)))
    }

    /// Whether the suites use their smaller sizes: --quick, or on a CPU unless --full.
    pub fn quick_sizes(&self, device: Device) -> bool {
        self.quick || (!self.full && device == Device::Cpu)
    }
}

/// A case label for a configuration file: its folder's name for a run folder's
/// `config.json`, else the file's stem.
fn config_label(path: &std::path::Path) -> String {
    let named = |p: Option<&std::ffi::OsStr>| p.map(|n| n.to_string_lossy().into_owned());
    match path.file_name().and_then(|n| n.to_str()) {
        Some("config.json") => named(path.parent().and_then(|p| p.file_name())),
        _ => named(path.file_stem()),
    }
    .unwrap_or_else(|| "config".into())
}
