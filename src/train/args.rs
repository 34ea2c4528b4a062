//! The command line of `reformer train`.

use std::path::PathBuf;
use std::time::Duration;

use crate::arg_values::{at_least_one, seconds};
use crate::device::RunArgs;
use crate::distributed::Backend;
use crate::memory_plan::{parse_budget, MemoryBudget};
use crate::precision::Precision;
use crate::tasks::TaskKind;

/// Train a model: the duplication task (default), enwik8, or any text file.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// What to learn (default: the task of --config or --preset, else duplication).
    #[arg(long, value_enum)]
    pub task: Option<TaskKind>,
    /// Data file (default: the one of --config; enwik8: data/enwik8; text: required).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A shipped preset: duplication, duplication-1k, duplication-4k, duplication-16k, duplication-64k,
    /// enwik8-cpu, enwik8-paper (default: the task's).
    #[arg(long)]
    pub preset: Option<String>,
    /// A run configuration file (JSON, the layout of config.json); replaces --preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a setting: --set model.lsh.n_hashes=2 --set train.lr=5e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run folder (default checkpoints/<task>-<unix time>-<pid>); one that already holds a run is refused (use --resume).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint (with its task and data).
    #[arg(long, conflicts_with_all = ["task", "data", "preset", "config", "set", "out", "init_from"])]
    pub resume: Option<PathBuf>,
    /// Start from the weights (best checkpoint) and model settings of another run, or an
    /// imported one (`reformer import`), with a fresh optimizer: fine-tuning. `--set
    /// model.KEY=VALUE` still applies; change only what keeps the weights' shapes and
    /// meaning (dropout, sliced_attention, reversible, ff_chunk_len, ...). A run longer
    /// than that model's positions (a length curriculum: `--preset duplication-16k
    /// --init-from` a finished duplication-4k run) takes max_seq_len, the positional
    /// layout and LSH's rounds and buckets from its preset or config: axial rows are
    /// appended when the column count is unchanged, else both axial tables start fresh;
    /// learned rows are appended.
    #[arg(long, value_name = "RUN")]
    pub init_from: Option<PathBuf>,
    /// Optimizer steps (overrides train.steps; with --resume, the lr schedule keeps the run's).
    #[arg(long)]
    pub steps: Option<i64>,
    /// Stop (and save) after this many minutes of training.
    #[arg(long = "time-limit", value_name = "MINUTES")]
    pub time_limit_minutes: Option<f64>,
    /// Stop (and save) once a validation reaches this figure: second-copy accuracy at or
    /// above it for duplication (a fraction, e.g. 0.99), bits per byte at or below it for
    /// the language-model tasks.
    #[arg(long, value_name = "FIGURE")]
    pub target: Option<f64>,
    /// Fetch enwik8 (enwik8.zip from the Hutter-prize page) when its file is missing.
    #[arg(long)]
    pub download: bool,
    /// Bytes of the test split scored at the end (LM tasks).
    #[arg(long, default_value_t = 1_000_000)]
    pub eval_bytes: usize,
    /// Arithmetic: f32, or bf16 / f16 autocast (CPU and CUDA), f16 with dynamic loss
    /// scaling, or auto: bf16 on CPUs that compute bfloat16 natively (AVX-512 BF16: Intel
    /// Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later; `reformer --version`
    /// says whether this one does), f32 on other CPUs and on CUDA. Default:
    /// train.precision of --config or --preset (auto in enwik8-cpu, f32 in the other
    /// shipped ones); with --resume, the run's. config.json records the precision used.
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Fit the run in this much memory: 8GiB, 512MiB, 8G (powers of 1024; GB for 10^9),
    /// or auto (what the device has free, less 10%). The planner picks the execution
    /// settings that do not change the result (reversible layers, sliced attention,
    /// feed-forward and loss chunks, rows per training and scoring pass), the fastest
    /// predicted to fit, prints the plan and records it in config.json; model and
    /// optimizer settings are never changed. On the CPU the budget is the process's peak
    /// resident memory, on CUDA what nvidia-smi shows for it; under --nproc it is per
    /// worker. A resumed run keeps its plan.
    #[arg(long, value_name = "SIZE", value_parser = parse_budget, conflicts_with = "resume")]
    pub memory_budget: Option<MemoryBudget>,
    /// Print a final summary object as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Data-parallel training on N local worker processes (rank 0 writes). Workers
    /// started by torchrun or a cluster launcher (RANK, WORLD_SIZE, MASTER_ADDR,
    /// MASTER_PORT set) join their group without it.
    #[arg(long, value_name = "N", value_parser = at_least_one::<i64>, allow_negative_numbers = true)]
    pub nproc: Option<i64>,
    /// The c10d backend between workers (default: nccl on CUDA, gloo on the CPU).
    #[arg(long, value_enum)]
    pub dist_backend: Option<Backend>,
    /// Seconds a worker waits for the others at a collective before failing.
    #[arg(long, value_name = "SECONDS", default_value = "300", value_parser = seconds, allow_negative_numbers = true)]
    pub dist_timeout: Duration,
    #[command(flatten)]
    pub run: RunArgs,
}
