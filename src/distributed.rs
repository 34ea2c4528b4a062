//! Data-parallel training over several processes with libtorch's c10d (the engine behind
//! PyTorch's DDP), through the C++ bridge `csrc/distributed.cpp`: a process group joined
//! from the launch variables that `torchrun` and cluster launchers set, parameters
//! broadcast from rank 0, gradients averaged in size-bounded buckets, and `--nproc N`,
//! which starts N local workers of this binary itself.
//!
//! Every collective blocks until all ranks take part; one that cannot complete (a rank
//! died, the timeout passed) is an error on every surviving rank, never a hang.

use std::ffi::{c_char, c_int, c_void, CString};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};
use torch_sys::C_tensor;

use crate::model::autograd_bridge::{error_from, ERROR_LEN};

/// Gradient bytes per all-reduce (PyTorch DDP's default bucket is 25 MiB).
pub const BUCKET_BYTES: i64 = 25 << 20;

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
    unsafe { dist_nccl_built() != 0 }
}

/// Where this process sits among the workers, from the variables a launcher sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: i64,
    pub world_size: i64,
    /// Rank among the workers of this machine (picks the GPU on CUDA).
    pub local_rank: i64,
    /// Workers on this machine (to share its CPU cores); `LOCAL_WORLD_SIZE`, else 1.
    pub local_world_size: i64,
    pub master_addr: String,
    pub master_port: u16,
    /// Set when a launcher's agent (torchrun) already serves the rendezvous store
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`): its restart count, which names the keys.
    pub agent_attempt: Option<i64>,
}

impl LaunchEnv {
    /// Read from `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
    /// `MASTER_PORT` (and torchrun's `TORCHELASTIC_USE_AGENT_STORE`,
    /// `TORCHELASTIC_RESTART_COUNT`): None when `WORLD_SIZE` is unset (a single
    /// process); an error naming the variable when one is missing or malformed.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        if var("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        let number = |name: &str| -> Result<i64> {
            let text = var(name).with_context(|| format!("WORLD_SIZE is set but {name} is not: set both"))?;
            text.trim().parse().with_context(|| format!("{name}={text:?} is not an integer"))
        };
        let world_size = number("WORLD_SIZE")?;
        let rank = number("RANK")?;
        if world_size < 1 || !(0..world_size).contains(&rank) {
            bail!("RANK={rank} must lie in 0..WORLD_SIZE={world_size}");
        }
        let local_rank = if var("LOCAL_RANK").is_some() { number("LOCAL_RANK")? } else { 0 };
        let local_world_size = if var("LOCAL_WORLD_SIZE").is_some() { number("LOCAL_WORLD_SIZE")? } else { 1 };
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = var("MASTER_PORT").unwrap_or_else(|| "29500".into());
        let master_port =
            port.trim().parse().with_context(|| format!("MASTER_PORT={port:?} is not a port number (1-65535)"))?;
        let agent_attempt = match var("TORCHELASTIC_USE_AGENT_STORE").as_deref().map(str::trim) {
            Some("True") | Some("true") | Some("1") => Some(if var("TORCHELASTIC_RESTART_COUNT").is_some() {
                number("TORCHELASTIC_RESTART_COUNT")?
            } else {
                0
            }),
            _ => None,
        };
        Ok(Some(Self { rank, world_size, local_rank, local_world_size, master_addr, master_port, agent_attempt }))
    }
}

/// A joined c10d process group; left when dropped.
pub struct ProcessGroup {
    handle: *mut c_void,
    pub rank: i64,
    pub world_size: i64,
    /// Where the group's own small tensors live (NCCL reduces CUDA tensors only).
    device: tch::Device,
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
        let mut err = [0 as c_char; ERROR_LEN];
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
            bail!("{}: {}", describe(), first_line(&error_from(&err).to_string()));
        }
        Ok(Self { handle, rank: env.rank, world_size: env.world_size, device })
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Copies `root`'s values of `tensors` into every rank's, in place.
    pub fn broadcast(&self, tensors: &[&Tensor], root: i64) -> Result<()> {
        let ptrs: Vec<*const C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
        self.call("broadcast", |err| unsafe {
            dist_broadcast(self.handle, ptrs.as_ptr(), ptrs.len(), root as c_int, err, ERROR_LEN)
        })
    }

    /// Sums each of `tensors` over the ranks, in place.
    pub fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<()> {
        let ptrs: Vec<*const C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
        self.call("all-reduce", |err| unsafe {
            dist_all_reduce_sum(self.handle, ptrs.as_ptr(), ptrs.len(), err, ERROR_LEN)
        })
    }

    /// Waits until every rank reaches this point.
    pub fn barrier(&self) -> Result<()> {
        self.call("barrier", |err| unsafe { dist_barrier(self.handle, err, ERROR_LEN) })
    }

    /// The sums over the ranks of a few host numbers.
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>> {
        let tensor = Tensor::from_slice(values).to(self.device);
        self.all_reduce_sum(&[&tensor])?;
        Ok(Vec::<f64>::try_from(&tensor.to(tch::Device::Cpu))?)
    }

    fn call(&self, what: &str, body: impl FnOnce(*mut c_char) -> c_int) -> Result<()> {
        let mut err = [0 as c_char; ERROR_LEN];
        if body(err.as_mut_ptr()) != 0 {
            let reason = first_line(&error_from(&err).to_string());
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

/// The first line of a libtorch message (the rest is a C++ context dump).
fn first_line(message: &str) -> String {
    message.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("(no message)").to_string()
}

/// Groups of consecutive tensors of one dtype and device holding at most `bucket_bytes`
/// together (a larger tensor alone), as index ranges.
fn buckets(tensors: &[Tensor], bucket_bytes: i64) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        let same_kind = i == start || (t.kind() == tensors[start].kind() && t.device() == tensors[start].device());
        if i > start && (bytes + size > bucket_bytes || !same_kind) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < tensors.len() {
        out.push(start..tensors.len());
    }
    out
}

/// Applies `collective` to each bucket of `tensors` as one flat tensor, then writes
/// the results back into the tensors.
fn bucketed(tensors: &[Tensor], bucket_bytes: i64, mut collective: impl FnMut(&Tensor) -> Result<()>) -> Result<()> {
    for range in buckets(tensors, bucket_bytes) {
        let members = &tensors[range];
        let flat = tch::no_grad(|| Tensor::cat(&members.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0));
        collective(&flat)?;
        tch::no_grad(|| {
            let mut offset = 0;
            for t in members {
                let n = t.numel() as i64;
                t.shallow_clone().copy_(&flat.narrow(0, offset, n).view_as(t));
                offset += n;
            }
        });
    }
    Ok(())
}

/// Rank 0's values of `variables` on every rank.
pub fn broadcast_parameters(group: &ProcessGroup, variables: &[Tensor]) -> Result<()> {
    bucketed(variables, BUCKET_BYTES, |flat| group.broadcast(&[flat], 0))
}

/// Replaces every defined gradient of `variables` by its mean over the ranks, in
/// buckets of at most `bucket_bytes`. Every rank must hold the same defined gradients.
pub fn average_gradients(group: &ProcessGroup, variables: &[Tensor], bucket_bytes: i64) -> Result<()> {
    let grads: Vec<Tensor> = variables.iter().map(Tensor::grad).filter(Tensor::defined).collect();
    let world = group.world_size as f64;
    bucketed(&grads, bucket_bytes, |flat| {
        group.all_reduce_sum(&[flat])?;
        tch::no_grad(|| {
            let _ = flat.shallow_clone().divide_scalar_(world);
        });
        Ok(())
    })
}

/// Fails when the ranks' parameters differ: every rank's sum and sum of squares of all
/// parameters (float64) must equal rank 0's. A cheap guard that data parallelism keeps
/// one model.
pub fn check_parameters_agree(group: &ProcessGroup, variables: &[Tensor]) -> Result<()> {
    let (sum, squares) = tch::no_grad(|| {
        variables.iter().fold((0.0, 0.0), |(s, q), v| {
            let v = v.to_kind(Kind::Double);
            (s + v.sum(Kind::Double).double_value(&[]), q + (&v * &v).sum(Kind::Double).double_value(&[]))
        })
    });
    let from_main = Tensor::from_slice(&[sum, squares]).to(group.device);
    group.broadcast(&[&from_main], 0)?;
    let main = Vec::<f64>::try_from(&from_main.to(tch::Device::Cpu))?;
    let agree = group.sum_f64(&[if main == [sum, squares] { 0.0 } else { 1.0 }])?;
    if agree[0] != 0.0 {
        bail!(
            "rank {}: parameters differ between ranks (checksums {:?} here, {:?} on rank 0)",
            group.rank,
            [sum, squares],
            main
        );
    }
    Ok(())
}

/// A free TCP port on the loopback, for a local group's rendezvous.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free local port")?;
    Ok(listener.local_addr()?.port())
}

/// `--nproc N`: runs this command line again (less `--nproc`) as N local workers of one
/// group on the loopback, each with its share of the CPU cores, and waits for them. When
/// one fails, the others stop on their own at their next collective (or its timeout);
/// any left after `timeout` more are killed. Returns an error naming the failed ranks.
///
/// The workers run in their own process group, so a Ctrl-C at the terminal reaches this
/// process alone, which passes each interrupt (or SIGTERM) on to every worker once: the
/// first makes them finish the step, save and stop together, a second stops them at once.
pub fn spawn_local(n: i64, args: &[String], timeout: Duration) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the reformer binary")?;
    let port = free_port()?;
    let pids: Arc<Mutex<Vec<u32>>> = Arc::default();
    let forwarded = Arc::clone(&pids);
    ctrlc::set_handler(move || {
        for pid in forwarded.lock().map(|p| p.clone()).unwrap_or_default() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
    })
    .context("cannot install the interrupt handler")?;
    let mut children: Vec<Child> = Vec::new();
    for rank in 0..n {
        let child = Command::new(&exe)
            .args(args)
            .process_group(0)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .with_context(|| format!("cannot start worker {rank}"))?;
        pids.lock().map_err(|_| anyhow::anyhow!("worker list poisoned"))?.push(child.id());
        children.push(child);
    }
    let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; children.len()];
    let mut first_failure: Option<Instant> = None;
    while status.iter().any(Option::is_none) {
        for (child, status) in children.iter_mut().zip(status.iter_mut()) {
            if status.is_none() {
                *status = child.try_wait()?;
                if status.is_some_and(|s| !s.success()) && first_failure.is_none() {
                    first_failure = Some(Instant::now());
                }
            }
        }
        if first_failure.is_some_and(|t| t.elapsed() > timeout) {
            for (child, status) in children.iter_mut().zip(&status) {
                if status.is_none() {
                    let _ = child.kill();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed: Vec<String> = status
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.is_some_and(|s| s.success()))
        .map(|(rank, s)| format!("rank {rank} ({})", s.map_or("killed".into(), |s| s.to_string())))
        .collect();
    if !failed.is_empty() {
        bail!("{} of {n} workers failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// The command-line arguments without `--nproc N` (or `--nproc=N`).
pub fn args_without_nproc(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for arg in args {
        if skip_next {
            skip_next = false;
        } else if arg == "--nproc" {
            skip_next = true;
        } else if !arg.starts_with("--nproc=") {
            out.push(arg.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_size_bound_and_keep_order() {
        let sizes = [10, 10, 30, 5, 5, 5];
        let tensors: Vec<Tensor> = sizes.iter().map(|&n| Tensor::zeros([n], (Kind::Float, tch::Device::Cpu))).collect();
        // 4 bytes per float: a bound of 80 bytes holds 20 floats.
        assert_eq!(buckets(&tensors, 80), vec![0..2, 2..3, 3..6]);
        assert_eq!(buckets(&tensors, 1 << 20), vec![0..6]);
        assert!(buckets(&[], 80).is_empty());
    }

    #[test]
    fn launch_variables_are_read_and_checked() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(LaunchEnv::from_lookup(env(&[])).unwrap(), None);
        let full = LaunchEnv::from_lookup(env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((full.rank, full.world_size, full.local_rank, full.master_port), (3, 4, 1, 1234));
        assert_eq!(full.agent_attempt, None);
        let torchrun = LaunchEnv::from_lookup(env(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(torchrun.agent_attempt, Some(2));
        let missing = LaunchEnv::from_lookup(env(&[("WORLD_SIZE", "2")])).unwrap_err().to_string();
        assert!(missing.contains("RANK"), "{missing}");
        let bad_rank = LaunchEnv::from_lookup(env(&[("WORLD_SIZE", "2"), ("RANK", "2")])).unwrap_err().to_string();
        assert!(bad_rank.contains("0..WORLD_SIZE"), "{bad_rank}");
        let bad_port =
            LaunchEnv::from_lookup(env(&[("WORLD_SIZE", "1"), ("RANK", "0"), ("MASTER_PORT", "x")])).unwrap_err();
        assert!(bad_port.to_string().contains("MASTER_PORT"));
    }

    #[test]
    fn nproc_is_removed_from_the_workers_arguments() {
        let args: Vec<String> = ["train", "--nproc", "2", "--steps", "3", "--nproc=4"].map(String::from).to_vec();
        assert_eq!(args_without_nproc(&args), ["train", "--steps", "3"]);
    }
}
