//! The `reformer` command line: train, generate, eval, bench, plot, import. Each
//! subcommand's flags are its `Args` struct, in the module that does the work.

use clap::{CommandFactory, Parser, Subcommand};

use reformer::allocator::{self, ConfString};
use reformer::bench::{self, BenchArgs};
use reformer::curves::{self, PlotArgs};
use reformer::eval::{self, EvalArgs};
use reformer::generate::{self, GenerateArgs};
use reformer::import::{self, ImportArgs};
use reformer::train::{self, TrainArgs};
use reformer::{distributed, error};

/// jemalloc serves every allocation of the process, libtorch's included (see
/// `reformer::allocator` for why).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc at start-up (its documented compile-time configuration symbol).
#[no_mangle]
#[used]
#[allow(non_upper_case_globals)]
static malloc_conf: ConfString = allocator::MALLOC_CONF;

extern "C" {
    /// jemalloc's control call (unprefixed, as linked above).
    fn mallctl(
        name: *const std::os::raw::c_char,
        old: *mut u8,
        old_len: *mut usize,
        new: *mut u8,
        new_len: usize,
    ) -> i32;
}

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

#[derive(Subcommand)]
enum Command {
    Train(TrainArgs),
    Generate(GenerateArgs),
    Eval(EvalArgs),
    Bench(BenchArgs),
    Plot(PlotArgs),
    Import(ImportArgs),
}

fn print_version() {
    println!("reformer {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch {}", reformer::LIBTORCH_VERSION);
    println!("cuda available: {} ({} device(s))", tch::Cuda::is_available(), tch::Cuda::device_count());
    let backends = if distributed::nccl_built() { "gloo, nccl" } else { "gloo" };
    println!("distributed backends: {backends}");
    println!("{}", reformer::cpu_paths::describe());
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Train(args)) => match args.nproc {
            Some(n) => distributed::launch_local(n, args.dist_timeout),
            None => train::run(args),
        },
        Some(Command::Generate(args)) => generate::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Plot(args)) => curves::run(args),
        Some(Command::Import(args)) => import::run(args),
        None if cli.version => {
            print_version();
            Ok(())
        }
        None => anyhow::bail!("no subcommand: use one of {} (see --help)", subcommand_names().join(", ")),
    }
}

/// The subcommands' names, as clap knows them from `Command`.
fn subcommand_names() -> Vec<String> {
    Cli::command().get_subcommands().map(|command| command.get_name().to_string()).collect()
}

/// Whether the user asked for libtorch's C++ frames.
fn backtrace_requested() -> bool {
    std::env::var("RUST_BACKTRACE").is_ok_and(|v| v != "0")
}

/// A failure as one line, or whole (C++ frames included) under RUST_BACKTRACE=1.
fn report(message: &str) -> String {
    if backtrace_requested() {
        message.replace("\\n", "\n")
    } else {
        error::first_line(message).to_string()
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help
        Err(err) => {
            // One line naming the problem, not clap's usage block.
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or("bad arguments").trim_start_matches("error: ");
            eprintln!("error: {first} (see --help)");
            exit_without_teardown(2);
        }
    };
    allocator::use_mallctl(mallctl);
    // A libtorch error surfaces in tch as a panic: reported below, not by the hook.
    std::panic::set_hook(Box::new(|_| {}));
    let code = match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => 0,
        Ok(Err(err)) => {
            eprintln!("error: {}", report(&format!("{err:#}")));
            1
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            eprintln!("error: internal failure: {}", report(message));
            1
        }
    };
    exit_without_teardown(code)
}

/// Ends the process at once, its output flushed, without the libraries' exit handlers:
/// libtorch's teardown (its CUDA libraries', even on a CPU-only machine) touches about
/// 120 MiB of pages at exit, which would be the peak resident memory of a small run and
/// count against `--memory-budget`. Everything a command writes is closed by then; the
/// kernel releases the rest.
fn exit_without_teardown(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    extern "C" {
        fn _exit(status: i32) -> !;
    }
    // SAFETY: `_exit` takes any status and does not return; no Rust state is used after.
    unsafe { _exit(code) }
}
