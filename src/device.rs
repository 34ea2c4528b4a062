//! `--device`, `--seed` and `--threads`: where tensors live, the run's seed and how many
//! CPU threads libtorch uses; the flags every subcommand takes.

use anyhow::{bail, Context, Result};
use tch::Device;

use crate::arg_values::at_least_one;
use crate::distributed::LaunchEnv;
use crate::ffi::checked;

/// The flags every subcommand takes.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Where tensors live: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Random seed (model initialisation, data order, dropout and hash rotations).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads for libtorch's operators (default: all cores; local data-parallel
    /// workers share them out).
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub threads: Option<usize>,
}

impl RunArgs {
    /// Sets libtorch's intra-op thread count and resolves `--device`.
    pub fn setup(&self) -> Result<Device> {
        let threads = match self.threads {
            Some(n) => Some(n),
            None => local_share_of_cores()?,
        };
        if let Some(n) = threads {
            tch::set_num_threads(n as i32);
        }
        parse_device(&self.device)
    }
}

/// Several workers on one machine (LOCAL_WORLD_SIZE > 1) split its cores between them.
fn local_share_of_cores() -> Result<Option<usize>> {
    let Some(launch) = LaunchEnv::from_env()? else { return Ok(None) };
    if launch.local_world_size <= 1 {
        return Ok(None);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Some((cores / launch.local_world_size as usize).max(1)))
}

/// Parses `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let device = match spec {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match spec.strip_prefix("cuda:") {
            Some(index) => {
                Device::Cuda(index.parse().with_context(|| format!("bad device '{spec}': expected cuda:N"))?)
            }
            None => bail!("unknown device '{spec}': use auto, cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(index) = device {
        let available = tch::Cuda::device_count() as usize;
        if index >= available {
            bail!("device '{spec}' is not available: this machine has {available} CUDA device(s); use --device cpu");
        }
    }
    Ok(device)
}

/// A short description of the device for reports.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

extern "C" {
    // From `csrc/libtorch_calls.cpp`.
    fn reformer_cuda_peak(index: i32, reserved: i32, peak: *mut i64, err: *mut std::ffi::c_char, err_len: usize)
        -> i32;
    fn reformer_cuda_reset_peak(index: i32, err: *mut std::ffi::c_char, err_len: usize) -> i32;
    fn reformer_cuda_memory_info(
        index: i32,
        free_bytes: *mut i64,
        total_bytes: *mut i64,
        err: *mut std::ffi::c_char,
        err_len: usize,
    ) -> i32;
}

/// Bytes the CUDA caching allocator has had allocated at most on device `index` since
/// the process started or `reset_cuda_peak`.
pub fn cuda_peak_allocated(index: usize) -> Result<i64> {
    cuda_peak(index, false)
}

/// Bytes the CUDA caching allocator has held from the driver at most on device `index`
/// since the process started or `reset_cuda_peak`: what nvidia-smi shows, less the
/// context.
pub fn cuda_peak_reserved(index: usize) -> Result<i64> {
    cuda_peak(index, true)
}

fn cuda_peak(index: usize, reserved: bool) -> Result<i64> {
    let mut peak = 0i64;
    // SAFETY: `peak` and the message buffer outlive the call.
    checked(|err, len| unsafe { reformer_cuda_peak(index as i32, reserved as i32, &mut peak, err, len) })?;
    Ok(peak)
}

/// Starts the CUDA caching allocator's peak statistics of device `index` afresh.
pub fn reset_cuda_peak(index: usize) -> Result<()> {
    // SAFETY: the message buffer outlives the call.
    checked(|err, len| unsafe { reformer_cuda_reset_peak(index as i32, err, len) })
}

/// Free bytes of CUDA device `index`, as the driver reports them.
pub fn cuda_free_bytes(index: usize) -> Result<i64> {
    let (mut free, mut total) = (0i64, 0i64);
    // SAFETY: the outputs and the message buffer outlive the call.
    checked(|err, len| unsafe { reformer_cuda_memory_info(index as i32, &mut free, &mut total, err, len) })?;
    Ok(free)
}
