//! `reformer`: train, sample from and benchmark the Reformer on libtorch.

pub mod allocator;
pub mod arg_values;
pub mod autograd;
pub mod bench;
pub mod cpu_paths;
pub mod curves;
pub mod device;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod ffi;
pub mod generate;
pub mod hash_rounds_sweep;
pub mod import;
pub mod memory_plan;
pub mod model;
pub mod optimizer;
pub mod plot;
pub mod precision;
pub mod progress;
pub mod run_config;
pub mod run_dir;
pub mod run_lock;
pub mod sampling;
pub mod score;
pub mod tasks;
pub mod train;

/// The libtorch version the binary was built against (read from the libtorch folder by
/// build.rs).
pub const LIBTORCH_VERSION: &str = match option_env!("REFORMER_LIBTORCH_VERSION") {
    Some(version) => version,
    None => "2.11.0",
};
