//! `--device` and `--threads`: where tensors live and how many CPU threads libtorch uses.

use anyhow::{bail, Context, Result};
use tch::Device;

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

/// Sets libtorch's intra-op thread count (default: all cores).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        tch::set_num_threads(n as i32);
    }
    Ok(())
}

/// A short description of the device for reports.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
