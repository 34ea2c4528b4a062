//! A joined c10d process group and its collectives, over the C++ bridge
//! `csrc/distributed.cpp` (a TCP store for the rendezvous, then Gloo or NCCL).

use std::ffi::{c_char, c_int, c_void, CString};
use std::time::Duration;

use anyhow::{bail, Result};
use tch::Tensor;
use torch_sys::C_tensor;

use super::launch::LaunchEnv;
use crate::error::first_line;
use crate::ffi::{self, ErrorBuffer, ERROR_LEN};

/// The c10d backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Gloo: CPU tensors, and CUDA tensors through host memory.
    Gloo,
    /// NCCL: CUDA tensors, GPU to GPU (built in when the CUDA and NCCL headers were at
    /// hand at build time; see `nccl_built`).
    Nccl,
}

impl Backend {
    /// PyTorch's choice: NCCL for CUDA tensors (when built in), Gloo otherwise.
    pub fn default_for(device: tch::Device) -> Self {
        if device.is_cuda() && nccl_built() {
            Self::Nccl
        } else {
            Self::Gloo
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Gloo => "gloo",
            Self::Nccl => "nccl",
        }
    }
}

extern "C" {
    fn dist_init(
        backend: *const c_char,
        master_addr: *const c_char,
        port: c_int,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        agent_attempt: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn dist_broadcast(
        group: *mut c_void,
        tensors: *const *const C_tensor,
        n: usize,
        root: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn dist_all_reduce_sum(
        group: *mut c_void,
        tensors: *const *const C_tensor,
        n: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn dist_barrier(group: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn dist_nccl_built() -> c_int;
    fn dist_destroy(group: *mut c_void);
}

/// Whether this binary carries libtorch's NCCL process group.
pub fn nccl_built() -> bool {
    // SAFETY: reads a constant.
    unsafe { dist_nccl_built() != 0 }
}

/// A joined c10d process group; left when dropped.
pub struct ProcessGroup {
    handle: *mut c_void,
    pub rank: i64,
    pub world_size: i64,
    /// Where the group's own small tensors live (NCCL reduces CUDA tensors only).
    pub device: tch::Device,
}

impl ProcessGroup {
    /// Joins the group described by `env` (rank 0 serves the rendezvous and waits for
    /// the others) for tensors on `device`; collectives that cannot finish within
    /// `timeout` fail.
    pub fn join(env: &LaunchEnv, backend: Backend, device: tch::Device, timeout: Duration) -> Result<Self> {
        if backend == Backend::Nccl && !device.is_cuda() {
            bail!("the nccl backend reduces CUDA tensors only: use --dist-backend gloo on the CPU");
        }
        let describe = || {
            format!(
                "cannot join the process group at {}:{} as rank {} of {} ({})",
                env.master_addr,
                env.master_port,
                env.rank,
                env.world_size,
                backend.name()
            )
        };
        let (name, addr) = (CString::new(backend.name())?, CString::new(env.master_addr.as_str())?);
        let mut err = ErrorBuffer::new();
        // SAFETY: every pointer is valid for the call; a non-null result is ours to destroy.
        let handle = unsafe {
            dist_init(
                name.as_ptr(),
                addr.as_ptr(),
                env.master_port as c_int,
                env.rank as c_int,
                env.world_size as c_int,
                timeout.as_millis() as i64,
                env.agent_attempt.map_or(-1, |a| a as c_int),
                err.as_mut_ptr(),
                ERROR_LEN,
            )
        };
        if handle.is_null() {
            bail!("{}: {}", describe(), first_line(&err.message()));
        }
        Ok(Self { handle, rank: env.rank, world_size: env.world_size, device })
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Copies `root`'s values of `tensors` into every rank's, in place.
    pub fn broadcast(&self, tensors: &[&Tensor], root: i64) -> Result<()> {
        let ptrs: Vec<*const C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
        // SAFETY: the handle is live and the tensors outlive the call.
        self.call("broadcast", |err, err_len| unsafe {
            dist_broadcast(self.handle, ptrs.as_ptr(), ptrs.len(), root as c_int, err, err_len)
        })
    }

    /// Sums each of `tensors` over the ranks, in place.
    pub fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<()> {
        let ptrs: Vec<*const C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
        // SAFETY: the handle is live and the tensors outlive the call.
        self.call("all-reduce", |err, err_len| unsafe {
            dist_all_reduce_sum(self.handle, ptrs.as_ptr(), ptrs.len(), err, err_len)
        })
    }

    /// Waits until every rank reaches this point.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: the handle is live.
        self.call("barrier", |err, err_len| unsafe { dist_barrier(self.handle, err, err_len) })
    }

    /// The sums over the ranks of a few host numbers.
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>> {
        let tensor = Tensor::from_slice(values).to(self.device);
        self.all_reduce_sum(&[&tensor])?;
        Ok(Vec::<f64>::try_from(&tensor.to(tch::Device::Cpu))?)
    }

    fn call(&self, what: &str, body: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
        if let Err(err) = ffi::checked(body) {
            let message = err.to_string();
            let reason = first_line(&message);
            bail!("rank {} of {}: {what} failed (a worker died or timed out?): {reason}", self.rank, self.world_size);
        }
        Ok(())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from dist_init and is destroyed once.
        unsafe { dist_destroy(self.handle) };
    }
}
