//! Data-parallel training over several processes with libtorch's c10d (the engine behind
//! PyTorch's DDP), through the C++ bridge `csrc/distributed.cpp`: a process group joined
//! from the launch variables that `torchrun` and cluster launchers set (`launch`), the
//! group and its collectives (`process_group`), and what data parallelism does with them:
//! parameters broadcast from rank 0, gradients averaged in size-bounded buckets
//! (`data_parallel`).
//!
//! Every collective blocks until all ranks take part; one that cannot complete (a rank
//! died, the timeout passed) is an error on every surviving rank, never a hang.

mod data_parallel;
mod launch;
mod process_group;

pub use data_parallel::{average_gradients, broadcast_parameters, check_parameters_agree, BUCKET_BYTES};
pub use launch::{launch_local, LaunchEnv};
pub use process_group::{nccl_built, Backend, ProcessGroup};
