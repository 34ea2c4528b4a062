//! `--memory-budget SIZE`: the most memory a run may use, as the user writes it (`8GiB`,
//! `512MiB`, `8G`, or `auto`), and what it leaves for the model once the process itself
//! is counted.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use tch::Device;

use crate::bench::case::process_memory;
use crate::bench::memory_model::available_bytes;

const KIB: f64 = 1024.0;

/// The share of the free memory that `auto` leaves to other processes and to the
/// prediction's error.
pub const AUTO_MARGIN: f64 = 0.10;

/// What a CUDA process holds on its device before any tensor (the context, cuBLAS's and
/// cuDNN's handles and workspaces), which `nvidia-smi` counts and the caching allocator
/// does not.
pub const CUDA_CONTEXT_BYTES: f64 = 600.0 * 1024.0 * 1024.0;

/// A memory budget: on the CPU the process's peak resident memory, on CUDA the memory
/// the device shows in use for the process (the caching allocator's reservations and the
/// CUDA context).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemoryBudget {
    Bytes(f64),
    /// What the device has free when the run starts, less `AUTO_MARGIN`.
    Auto,
}

impl FromStr for MemoryBudget {
    type Err = anyhow::Error;

    /// `auto`, or a number with a unit: K, M, G, T (and KiB … TiB) count in powers of
    /// 1024, KB, MB, GB, TB in powers of 1000; case does not matter.
    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = (&text[..split], text[split..].trim());
        let malformed =
            || anyhow::anyhow!("memory budget {text:?}: give a size with its unit, e.g. 8GiB, 512MiB or 8G (or auto)");
        let value: f64 = number.parse().map_err(|_| malformed())?;
        let scale = match unit.to_ascii_lowercase().as_str() {
            "k" | "kib" => KIB,
            "m" | "mib" => KIB.powi(2),
            "g" | "gib" => KIB.powi(3),
            "t" | "tib" => KIB.powi(4),
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            _ => return Err(malformed()),
        };
        if !(value > 0.0 && value.is_finite()) {
            bail!("memory budget {text:?} must be more than nothing");
        }
        Ok(Self::Bytes(value * scale))
    }
}

impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Bytes(bytes) => write!(f, "{}", format_bytes(*bytes)),
        }
    }
}

/// A size the way a user writes one: `1.5 GiB`, `512 MiB`.
pub fn format_bytes(bytes: f64) -> String {
    if bytes >= KIB.powi(3) {
        format!("{:.2} GiB", bytes / KIB.powi(3))
    } else {
        format!("{:.0} MiB", bytes / KIB.powi(2))
    }
}

impl MemoryBudget {
    /// The whole budget in bytes on `device`: `auto` reads what is free now.
    pub fn total_bytes(&self, device: Device) -> Result<f64> {
        match *self {
            Self::Bytes(bytes) => Ok(bytes),
            Self::Auto => {
                let free = match device {
                    Device::Cuda(index) => Some(crate::device::cuda_free_bytes(index)? as f64),
                    _ => available_bytes().map(|available| available + process_memory("VmRSS:") as f64),
                };
                match free {
                    Some(free) => Ok(free * (1.0 - AUTO_MARGIN)),
                    None => {
                        bail!("--memory-budget auto: this system does not say how much memory is free; give a size")
                    }
                }
            }
        }
    }

    /// The budget on `device` now: its bytes, and what the process already holds of
    /// them (on the CPU its resident memory: libtorch and the binary; on CUDA the
    /// context), read once so that both describe the same moment.
    pub fn resolve(&self, device: Device) -> Result<Resolved> {
        let total = self.total_bytes(device)?;
        let process = match device {
            Device::Cuda(_) => CUDA_CONTEXT_BYTES,
            _ => process_memory("VmRSS:") as f64,
        };
        if total <= process {
            bail!(
                "--memory-budget {}: the process alone holds {} before any model is built",
                format_bytes(total),
                format_bytes(process)
            );
        }
        Ok(Resolved { total, process })
    }
}

/// A budget in bytes, and the share of it the process held before the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Resolved {
    pub total: f64,
    pub process: f64,
}

impl Resolved {
    /// What the budget leaves for the model's tensors.
    pub fn model_bytes(&self) -> f64 {
        self.total - self.process
    }
}

/// The process's peak so far, as a budget counts it: on the CPU its peak resident
/// memory, on CUDA the caching allocator's peak reservation and the context.
pub fn process_peak_bytes(device: Device) -> f64 {
    match device {
        Device::Cuda(index) => {
            crate::device::cuda_peak_reserved(index).map_or(f64::NAN, |peak| peak as f64 + CUDA_CONTEXT_BYTES)
        }
        _ => process_memory("VmHWM:") as f64,
    }
}

/// clap's parser of `--memory-budget`.
pub fn parse_budget(text: &str) -> Result<MemoryBudget, String> {
    text.parse().map_err(|e: anyhow::Error| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str) -> f64 {
        match text.parse::<MemoryBudget>().unwrap() {
            MemoryBudget::Bytes(b) => b,
            MemoryBudget::Auto => panic!("{text} read as auto"),
        }
    }

    #[test]
    fn sizes_read_with_binary_and_decimal_units() {
        assert_eq!(bytes("8GiB"), 8.0 * 1024f64.powi(3));
        assert_eq!(bytes("8G"), 8.0 * 1024f64.powi(3));
        assert_eq!(bytes("8g"), 8.0 * 1024f64.powi(3));
        assert_eq!(bytes("512MiB"), 512.0 * 1024f64.powi(2));
        assert_eq!(bytes("1.5 GiB"), 1.5 * 1024f64.powi(3));
        assert_eq!(bytes("2GB"), 2e9);
        assert_eq!(bytes("100k"), 102_400.0);
        assert_eq!("AUTO".parse::<MemoryBudget>().unwrap(), MemoryBudget::Auto);
    }

    #[test]
    fn a_malformed_size_is_one_line_naming_the_forms() {
        for text in ["8", "eight GiB", "8 GiBs", "GiB", "-1G", "1.2.3G", ""] {
            let err = parse_budget(text).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
            assert!(err.contains("8GiB"), "{text}: {err}");
        }
        assert!(parse_budget("0G").unwrap_err().contains("more than nothing"));
    }

    #[test]
    fn auto_is_what_is_free_less_the_margin() {
        let Some(available) = available_bytes() else { return }; // not Linux: nothing to compare
        let resident = process_memory("VmRSS:") as f64;
        let auto = MemoryBudget::Auto.total_bytes(Device::Cpu).unwrap();
        let expected = (available + resident) * (1.0 - AUTO_MARGIN);
        assert!((auto - expected).abs() < 0.05 * expected, "{auto} vs {expected}");
        assert_eq!(MemoryBudget::Auto.to_string(), "auto");
    }

    #[test]
    fn the_model_gets_the_budget_less_the_process() {
        let resident = process_memory("VmRSS:") as f64;
        let budget = MemoryBudget::Bytes(resident + 1e9);
        let left = budget.resolve(Device::Cpu).unwrap().model_bytes();
        assert!((left - 1e9).abs() < 64e6, "{left}"); // the process grows a little between reads
        let err = MemoryBudget::Bytes(1e6).resolve(Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("the process alone holds"), "{err}");
    }
}
