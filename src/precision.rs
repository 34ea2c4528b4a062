//! The arithmetic of a run: float32 throughout, or libtorch's autocast to bfloat16 or
//! float16 on the CPU or CUDA (matmuls and other eligible ops in the low precision;
//! parameters, optimizer state, reductions that autocast keeps in float32 stay float32).
//!
//! tch's own `autocast` switches CUDA autocast alone, to libtorch's default CUDA dtype
//! (float16); here the device type and the dtype are always set explicitly, through
//! `csrc/libtorch_calls.cpp`.

use std::ffi::{c_char, c_int};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::cpu_paths::native_bf16;
use crate::ffi::checked;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout.
    #[default]
    F32,
    /// bfloat16 autocast (float32's range: no loss scaling needed).
    Bf16,
    /// float16 autocast, with dynamic loss scaling in training.
    F16,
    /// bf16 on a CPU that computes bfloat16 natively (AVX-512 BF16: Intel Cooper Lake,
    /// Sapphire Rapids and later, AMD Zen 4 and later), f32 on other CPUs and on CUDA;
    /// resolved when a run starts, so config.json records the precision used.
    Auto,
}

impl Precision {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::Auto => "auto",
        }
    }

    /// The precision used on `device`: `Auto` decided (see `cpu_paths::native_bf16`), any
    /// other unchanged.
    pub fn resolve(self, device: Device) -> Self {
        match self {
            Self::Auto if !device.is_cuda() && native_bf16() => Self::Bf16,
            Self::Auto => Self::F32,
            fixed => fixed,
        }
    }

    /// Why `Auto` means what it does on `device`, for the log.
    pub fn auto_reason(device: Device) -> &'static str {
        match (device.is_cuda(), native_bf16()) {
            (true, _) => "auto: float32 on CUDA",
            (false, true) => "auto: this CPU computes bfloat16 natively (AVX-512 BF16)",
            (false, false) => {
                "auto: this CPU does not compute bfloat16 natively (no AVX-512 BF16, or ONEDNN_MAX_CPU_ISA below it)"
            }
        }
    }

    /// The dtype autocast computes eligible ops in (float32: none).
    pub fn compute_kind(self, device: Device) -> Kind {
        match self.resolve(device) {
            Self::Bf16 => Kind::BFloat16,
            Self::F16 => Kind::Half,
            Self::F32 | Self::Auto => Kind::Float,
        }
    }

    /// The code `csrc/libtorch_calls.cpp` uses for the autocast dtype (0: off).
    fn code(self, device: Device) -> c_int {
        match self.resolve(device) {
            Self::F32 | Self::Auto => 0,
            Self::Bf16 => 1,
            Self::F16 => 2,
        }
    }

    fn from_code(code: c_int) -> Self {
        match code {
            1 => Self::Bf16,
            2 => Self::F16,
            _ => Self::F32,
        }
    }

    /// Runs `f` with autocast on `device`'s type set to this precision (float32: autocast
    /// off; `Auto` resolved for `device`), restoring the previous state afterwards, even
    /// if `f` panics.
    pub fn autocast<T>(self, device: Device, f: impl FnOnce() -> T) -> Result<T> {
        let _scope = AutocastScope::enter(device, self)?;
        Ok(f())
    }

    /// The precision autocast is set to on `device`'s type on this thread.
    pub fn current(device: Device) -> Self {
        // SAFETY: reads thread-local state.
        Self::from_code(unsafe { reformer_autocast_state(device_code(device)) })
    }
}

/// Runs `f` with autocast off on `device`'s type: for the computations that must stay
/// in float32 whatever the run's precision (LSH hashing).
pub fn without_autocast<T>(device: Device, f: impl FnOnce() -> T) -> T {
    let _scope = AutocastScope::enter(device, Precision::F32).expect("autocast state cannot be set");
    f()
}

/// A tensor of bfloat16 or float16 as float32; any other unchanged (float64 stays).
pub fn at_least_float32(x: &Tensor) -> Tensor {
    match x.kind() {
        Kind::BFloat16 | Kind::Half => x.to_kind(Kind::Float),
        _ => x.shallow_clone(),
    }
}

/// Autocast set for a scope: the previous state comes back on drop.
pub struct AutocastScope {
    device: c_int,
    saved: [c_int; 2],
}

impl AutocastScope {
    /// Sets autocast on `device`'s type to `precision` until the scope is dropped.
    pub fn enter(device: Device, precision: Precision) -> Result<Self> {
        let mut scope = Self { device: device_code(device), saved: [0; 2] };
        // SAFETY: `saved` has room for the two ints the call writes.
        checked(|err, len| unsafe {
            reformer_autocast_enter(scope.device, precision.code(device), scope.saved.as_mut_ptr(), err, len)
        })?;
        Ok(scope)
    }
}

impl Drop for AutocastScope {
    fn drop(&mut self) {
        // SAFETY: `saved` holds what `enter` wrote. Restoring thread-local flags cannot
        // fail in practice; a failure here has nowhere to go but the log.
        if let Err(e) =
            checked(|err, len| unsafe { reformer_autocast_exit(self.device, self.saved.as_ptr(), err, len) })
        {
            eprintln!("warning: cannot restore the autocast state: {e}");
        }
    }
}

/// The device-type code of `csrc/libtorch_calls.cpp` (0 CPU, 1 CUDA).
fn device_code(device: Device) -> c_int {
    c_int::from(device.is_cuda())
}

extern "C" {
    fn reformer_autocast_enter(
        device_type: c_int,
        dtype: c_int,
        saved: *mut c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn reformer_autocast_exit(device_type: c_int, saved: *const c_int, err: *mut c_char, err_len: usize) -> c_int;
    fn reformer_autocast_state(device_type: c_int) -> c_int;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_on_the_cpu_computes_matmuls_in_the_chosen_dtype_and_restores_the_state() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        for (precision, kind) in [(Precision::Bf16, Kind::BFloat16), (Precision::F16, Kind::Half)] {
            let product = precision.autocast(Device::Cpu, || a.matmul(&a)).unwrap();
            assert_eq!(product.kind(), kind, "{precision:?}");
            assert_eq!(Precision::current(Device::Cpu), Precision::F32);
        }
        let nested = Precision::Bf16
            .autocast(Device::Cpu, || {
                let inner = Precision::F32.autocast(Device::Cpu, || a.matmul(&a).kind()).unwrap();
                (inner, Precision::current(Device::Cpu))
            })
            .unwrap();
        assert_eq!(nested, (Kind::Float, Precision::Bf16));
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }

    #[test]
    fn auto_is_bf16_only_on_a_cpu_that_computes_it_natively_and_fixed_choices_stay() {
        let cpu = if native_bf16() { Precision::Bf16 } else { Precision::F32 };
        assert_eq!(Precision::Auto.resolve(Device::Cpu), cpu);
        assert_eq!(Precision::Auto.resolve(Device::Cuda(0)), Precision::F32);
        for fixed in [Precision::F32, Precision::Bf16, Precision::F16] {
            assert_eq!(fixed.resolve(Device::Cpu), fixed);
            assert_eq!(fixed.resolve(Device::Cuda(0)), fixed);
        }
        let a = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        let kind = Precision::Auto.autocast(Device::Cpu, || a.matmul(&a).kind()).unwrap();
        assert_eq!(kind, Precision::Auto.compute_kind(Device::Cpu));
        assert_eq!(kind, cpu.compute_kind(Device::Cpu));
    }
}
