//! One writer per run folder: `reformer train` (new or `--resume`) holds an exclusive
//! lock on `RUN/.lock` (flock: the OS releases it when the process ends, however it
//! ends) for as long as it trains, with its pid written inside so that a second writer
//! is refused with one line naming the holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

const LOCK_FILE: &str = ".lock";

/// The held lock of a run folder; released when dropped.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of the run folder `dir` (which must exist), or fails with one line
    /// naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
                bail!(
                    "{} is in use by {who} (a reformer training it): wait for it to finish, or train into another --out",
                    dir.display()
                );
            }
            Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_free_once_dropped() {
        let dir = std::env::temp_dir().join(format!("reformer-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let held = RunLock::acquire(&dir).unwrap();
        // A second open file description conflicts even within one process.
        let refused = RunLock::acquire(&dir).err().expect("the second lock must be refused").to_string();
        assert!(refused.contains(&format!("process {}", std::process::id())), "{refused}");
        drop(held);
        RunLock::acquire(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
