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
}

impl Precision {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// The code `csrc/libtorch_calls.cpp` uses for the autocast dtype (0: off).
    fn code(self) -> c_int {
        match self {
            Self::F32 => 0,
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
    /// off), restoring the previous state afterwards, even if `f` panics.
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
            reformer_autocast_enter(scope.device, precision.code(), scope.saved.as_mut_ptr(), err, len)
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
}
