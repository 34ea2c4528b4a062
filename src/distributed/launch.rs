//! How a worker learns its place among the others (the launch variables that torchrun
//! and cluster launchers set), and `--nproc N`, which starts N local workers itself.

use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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

/// A free TCP port on the loopback, for a local group's rendezvous.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free local port")?;
    Ok(listener.local_addr()?.port())
}

/// `--nproc N`: runs this process's command line again as N local workers (see
/// `spawn_local`); refused under a launcher, which starts the workers itself.
pub fn launch_local(n: i64, timeout: Duration) -> Result<()> {
    if std::env::var_os("WORLD_SIZE").is_some() {
        bail!("--nproc starts its own workers: do not combine it with a launcher (WORLD_SIZE is set)");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    spawn_local(n, &args_without_nproc(&args), timeout)
}

/// Runs the binary with `args` (the command line less `--nproc`) as N local workers of
/// one group on the loopback, each with its share of the CPU cores, and waits for them. When
/// one fails, the others stop on their own at their next collective (or its timeout);
/// any left after `timeout` more are killed. Returns an error naming the failed ranks.
///
/// The workers run in their own process group, so a Ctrl-C at the terminal reaches this
/// process alone, which passes each interrupt (or SIGTERM) on to every worker once: the
/// first makes them finish the step, save and stop together, a second stops them at once.
fn spawn_local(n: i64, args: &[String], timeout: Duration) -> Result<()> {
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
fn args_without_nproc(args: &[String]) -> Vec<String> {
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
