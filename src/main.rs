//! The `reformer` command line: train, generate, bench.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use reformer::bench::{self, BenchOptions, Suite};
use reformer::device::{parse_device, set_threads};
use reformer::distributed::{self, Backend};
use reformer::eval::{self, EvalAttention, EvalOptions};
use reformer::generate::{self, GenerateOptions};
use reformer::tasks::{Split, TaskKind};
use reformer::train::{self, Precision, TrainOptions};

/// Train, sample from and benchmark the Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020):
/// LSH attention, reversible layers, chunked feed-forward, on libtorch (CPU or CUDA).
#[derive(Parser)]
#[command(name = "reformer", disable_version_flag = true)]
struct Cli {
    /// Print the crate and libtorch versions and whether CUDA is available.
    #[arg(short = 'V', long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Settings every subcommand takes.
#[derive(Args, Clone)]
struct Common {
    /// Where tensors live: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Random seed (model initialisation, data order, dropout and hash rotations).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU threads for libtorch's operators (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model: the duplication task (default), enwik8, or any text file.
    Train {
        /// What to learn.
        #[arg(long, value_enum, default_value = "duplication")]
        task: TaskKind,
        /// Data file (enwik8: default data/enwik8; text: required).
        #[arg(long)]
        data: Option<PathBuf>,
        /// A shipped preset: duplication, enwik8-cpu, enwik8-paper (default: the task's).
        #[arg(long)]
        preset: Option<String>,
        /// A run configuration file (JSON, the layout of config.json); replaces --preset.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a setting: --set model.lsh.n_hashes=2 --set train.lr=5e-4 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Run folder (default checkpoints/<task>-<unix time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the run in this folder from its latest checkpoint.
        #[arg(long, conflicts_with_all = ["preset", "config", "set", "out"])]
        resume: Option<PathBuf>,
        /// Optimizer steps (overrides train.steps; with --resume, the lr schedule keeps the run's).
        #[arg(long)]
        steps: Option<i64>,
        /// Stop (and save) after this many minutes of training.
        #[arg(long, value_name = "MINUTES")]
        time_limit: Option<f64>,
        /// Fetch enwik8 (enwik8.zip from the Hutter-prize page) when its file is missing.
        #[arg(long)]
        download: bool,
        /// Bytes of the test split scored at the end (LM tasks).
        #[arg(long, default_value_t = 1_000_000)]
        eval_bytes: usize,
        /// Arithmetic: f32, or bf16 autocast (CUDA only).
        #[arg(long, value_enum, default_value = "f32")]
        precision: Precision,
        /// Print a final summary object as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Data-parallel training on N local worker processes (rank 0 writes). Workers
        /// started by torchrun or a cluster launcher (RANK, WORLD_SIZE, MASTER_ADDR,
        /// MASTER_PORT set) join their group without it.
        #[arg(long, value_name = "N")]
        nproc: Option<i64>,
        /// The c10d backend between workers (default: nccl on CUDA, gloo on the CPU).
        #[arg(long, value_enum)]
        dist_backend: Option<Backend>,
        /// Seconds a worker waits for the others at a collective before failing.
        #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
        dist_timeout: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Sample text from a trained checkpoint, streamed to stdout.
    Generate {
        /// A run folder (its best checkpoint is used) or one checkpoint folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Text to continue.
        #[arg(long, conflicts_with = "prompt_file")]
        prompt: Option<String>,
        /// File whose bytes are the prompt.
        #[arg(long)]
        prompt_file: Option<PathBuf>,
        /// Bytes to generate.
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        /// Softmax temperature (0 means greedy).
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        /// Sample among the k most likely bytes only.
        #[arg(long)]
        top_k: Option<i64>,
        /// Sample among the most likely bytes covering probability p (nucleus).
        #[arg(long)]
        top_p: Option<f64>,
        /// Always take the most likely byte.
        #[arg(long)]
        greedy: bool,
        /// Re-run the forward pass over the whole context for every token instead of
        /// decoding through the cache. The cache gives the same tokens for full, local
        /// and strict-causal LSH attention; for LSH layers trained with the paper's rule
        /// (attend within the query's chunk of the bucket-sorted sequence and one back)
        /// it applies the strict rule, an approximation: use --no-cache for the exact model.
        #[arg(long)]
        no_cache: bool,
        /// Independent samples to draw.
        #[arg(long, default_value_t = 1)]
        num_samples: usize,
        /// Print one JSON object with the samples and statistics instead of streaming.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Score a checkpoint on held-out data, optionally with other hash rounds (Table 2).
    Eval {
        /// A run folder (its best checkpoint is used) or one checkpoint folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The task (default: the run's).
        #[arg(long, value_enum)]
        task: Option<TaskKind>,
        /// Data file (default: the run's).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Which part of the data, in non-overlapping windows.
        #[arg(long, value_enum, default_value = "test")]
        split: Split,
        /// At most this many bytes (tokens) of the split.
        #[arg(long, default_value_t = 1_000_000)]
        eval_bytes: usize,
        /// Window length (at most the model's max_seq_len; default: the run's).
        #[arg(long)]
        seq_len: Option<i64>,
        /// Windows per batch (default: the run's).
        #[arg(long)]
        batch_size: Option<i64>,
        /// Hash rounds of the LSH layers, one evaluation each: --n-hashes 1,2,4,8.
        #[arg(long, value_delimiter = ',')]
        n_hashes: Vec<i64>,
        /// lsh (as trained); full: LSH layers as dense shared-QK attention; strict: LSH
        /// layers under the strict causal rule (what generate's cache computes).
        #[arg(long, value_enum, default_value = "lsh")]
        attention: EvalAttention,
        /// Score exactly the validation windows the training run logged (ignores --split).
        #[arg(long)]
        training_windows: bool,
        /// Print one JSON object with every figure and the settings used.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Measure speed and memory: LSH against full attention over length, training steps.
    Bench {
        /// Which measurements to run.
        #[arg(long, value_enum, default_value = "all")]
        suite: Suite,
        /// Timed steps per case (after warm-up); the median is reported.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Smaller sizes, for a run of a few minutes on a CPU (the default on a CPU).
        #[arg(long, conflicts_with = "full")]
        quick: bool,
        /// The full sizes even on a CPU (the default on a GPU).
        #[arg(long)]
        full: bool,
        /// Measure training steps of a shipped preset's model (and of the same model with
        /// full attention) instead of the suites, the first step timed (no warm-up):
        /// duplication, enwik8-cpu, enwik8-paper.
        #[arg(long)]
        preset: Option<String>,
        /// Sequence lengths of the attention suite, comma-separated (e.g. 1024,4096,65536).
        #[arg(long, value_delimiter = ',')]
        lengths: Option<Vec<i64>>,
        /// Write every raw number and the machine to this JSON file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw the figure (time per token over length, memory over depth) to this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Tabulate (and with --plot draw) earlier --json reports, comma-separated, instead
        /// of measuring.
        #[arg(long, value_delimiter = ',')]
        from: Vec<PathBuf>,
        /// Run one case given as JSON and print its result (used by the suites, which
        /// run each case in a fresh process).
        #[arg(long, hide = true)]
        case: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

fn print_version() {
    println!("reformer {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch {}", reformer::LIBTORCH_VERSION);
    println!("cuda available: {} ({} device(s))", tch::Cuda::is_available(), tch::Cuda::device_count());
    let backends = if distributed::nccl_built() { "gloo, nccl" } else { "gloo" };
    println!("distributed backends: {backends}");
}

/// Several workers on one machine (LOCAL_WORLD_SIZE > 1) split its cores between them
/// unless --threads says otherwise.
fn share_cores_among_local_workers(common: &Common) -> Result<()> {
    let Some(launch) = distributed::LaunchEnv::from_env()? else { return Ok(()) };
    if common.threads.is_none() && launch.local_world_size > 1 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        set_threads(Some((cores / launch.local_world_size as usize).max(1)))?;
    }
    Ok(())
}

fn setup(common: &Common) -> Result<tch::Device> {
    set_threads(common.threads)?;
    parse_device(&common.device)
}

fn run(cli: Cli) -> Result<()> {
    let Some(command) = cli.command else {
        if cli.version {
            print_version();
            return Ok(());
        }
        anyhow::bail!("no subcommand: use `reformer train`, `reformer generate`, `reformer eval` or `reformer bench` (see --help)");
    };
    match command {
        Command::Train {
            task,
            data,
            preset,
            config,
            set,
            out,
            resume,
            steps,
            time_limit,
            download,
            eval_bytes,
            precision,
            json,
            nproc,
            dist_backend,
            dist_timeout,
            common,
        } => {
            if dist_timeout.is_nan() || dist_timeout <= 0.0 {
                anyhow::bail!("--dist-timeout must be positive, not {dist_timeout}");
            }
            let dist_timeout = Duration::from_secs_f64(dist_timeout);
            if let Some(n) = nproc {
                if n < 1 {
                    anyhow::bail!("--nproc must be at least 1, not {n}");
                }
                if std::env::var_os("WORLD_SIZE").is_some() {
                    anyhow::bail!(
                        "--nproc starts its own workers: do not combine it with a launcher (WORLD_SIZE is set)"
                    );
                }
                let args: Vec<String> = std::env::args().skip(1).collect();
                return distributed::spawn_local(n, &distributed::args_without_nproc(&args), dist_timeout);
            }
            let device = setup(&common)?;
            share_cores_among_local_workers(&common)?;
            train::run(TrainOptions {
                download,
                task,
                data,
                preset,
                config,
                set,
                out,
                resume,
                steps,
                time_limit_minutes: time_limit,
                eval_bytes,
                precision,
                json,
                device,
                seed: common.seed,
                dist_backend,
                dist_timeout,
            })
        }
        Command::Generate {
            checkpoint,
            prompt,
            prompt_file,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            greedy,
            no_cache,
            num_samples,
            json,
            common,
        } => {
            let device = setup(&common)?;
            tch::manual_seed(common.seed as i64);
            let prompt = match (prompt, prompt_file) {
                (Some(text), _) => text.into_bytes(),
                (None, Some(path)) => {
                    std::fs::read(&path).with_context(|| format!("cannot read prompt file {}", path.display()))?
                }
                (None, None) => Vec::new(),
            };
            if temperature < 0.0 {
                anyhow::bail!("--temperature {temperature} must not be negative");
            }
            if top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
                anyhow::bail!("--top-p must be in [0, 1]");
            }
            generate::run(GenerateOptions {
                checkpoint,
                prompt,
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                greedy,
                no_cache,
                num_samples,
                json,
                device,
            })
        }
        Command::Eval {
            checkpoint,
            task,
            data,
            split,
            eval_bytes,
            seq_len,
            batch_size,
            n_hashes,
            attention,
            training_windows,
            json,
            common,
        } => {
            let device = setup(&common)?;
            eval::run(EvalOptions {
                checkpoint,
                task,
                data,
                split,
                eval_bytes,
                seq_len,
                batch_size,
                n_hashes,
                attention,
                training_windows,
                json,
                device,
            })
        }
        Command::Bench { suite, steps, quick, full, lengths, preset, json, plot, from, case, common } => {
            let device = setup(&common)?;
            let quick = quick || (!full && device == tch::Device::Cpu);
            bench::run(BenchOptions {
                suite,
                steps,
                quick,
                lengths,
                preset,
                json,
                plot,
                from,
                case,
                device,
                threads: common.threads,
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help
        Err(err) => {
            // One line naming the problem, not clap's usage block.
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or("bad arguments").trim_start_matches("error: ");
            eprintln!("error: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    // A libtorch error surfaces in tch as a panic; report it as one line, not a backtrace.
    std::panic::set_hook(Box::new(|_| {}));
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            // libtorch appends its C++ stack to the message: keep the first line.
            let first = message
                .lines()
                .next()
                .unwrap_or(message)
                .trim_start_matches("called `Result::unwrap()` on an `Err` value: ");
            eprintln!("error: internal failure: {first}");
            ExitCode::FAILURE
        }
    }
}
