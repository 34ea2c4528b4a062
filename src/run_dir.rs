//! The run directory and its checkpoints, written so that a crash at any instant leaves
//! the previous checkpoint intact and loadable.
//!
//! ```text
//! RUN/config.json                      the resolved RunConfig
//! RUN/metrics.jsonl                    one JSON object per log interval
//! RUN/checkpoints/step-00000100/       model.safetensors, optimizer.safetensors, state.json
//!                                      (the trainer's `TrainState`, train/state.rs)
//! RUN/latest, RUN/best                 the name of the newest / best checkpoint folder
//! ```
//! A checkpoint folder is filled under a temporary name, its files synced, then renamed
//! into place; `latest` and `best` are replaced by rename too.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::{nn, Device, Tensor};

use crate::model::ReformerLm;
use crate::run_config::RunConfig;
use crate::run_lock::RunLock;

const MODEL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} into place", tmp.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync folder {}", dir.display()))
}

pub struct RunDir {
    pub path: PathBuf,
    /// Held while this process writes the run (`create`, `lock_for_writing`).
    lock: Option<RunLock>,
}

impl RunDir {
    /// Creates the run directory, takes its lock (`RunLock`) and writes its
    /// `config.json`, the hashing resolved (`ModelConfig::resolve_hashing`). A folder that
    /// already holds a run is refused: a new run would mix into it.
    pub fn create(path: &Path, cfg: &RunConfig) -> Result<Self> {
        fs::create_dir_all(path.join("checkpoints"))
            .with_context(|| format!("cannot create run folder {}", path.display()))?;
        let lock = RunLock::acquire(path)?;
        if path.join("config.json").exists() {
            bail!(
                "{} already holds a run: continue it with --resume {}, or train into another --out",
                path.display(),
                path.display()
            );
        }
        let mut saved = cfg.clone();
        saved.model.resolve_hashing();
        write_atomic(&path.join("config.json"), serde_json::to_string_pretty(&saved)?.as_bytes())?;
        Ok(Self { path: path.to_path_buf(), lock: Some(lock) })
    }

    /// Takes the run's lock for this process, which is about to write it (`--resume`).
    pub fn lock_for_writing(&mut self) -> Result<()> {
        if self.lock.is_none() {
            self.lock = Some(RunLock::acquire(&self.path)?);
        }
        Ok(())
    }

    /// The run directory at `path`, made (or to be made) by another process: for a
    /// worker that reads it but never writes.
    pub fn unwritten(path: &Path) -> Self {
        Self { path: path.to_path_buf(), lock: None }
    }

    /// Opens an existing run directory and reads its configuration.
    pub fn open(path: &Path) -> Result<(Self, RunConfig)> {
        let config_path = path.join("config.json");
        if !config_path.exists() {
            bail!("{} is not a run folder: it has no config.json", path.display());
        }
        let mut cfg = RunConfig::from_file(&config_path)?;
        cfg.model.pin_hashing_of_earlier_releases();
        Ok((Self { path: path.to_path_buf(), lock: None }, cfg))
    }

    fn pointer(&self, name: &str) -> Option<PathBuf> {
        let folder = fs::read_to_string(self.path.join(name)).ok()?;
        let dir = self.path.join("checkpoints").join(folder.trim());
        dir.join(STATE_FILE).exists().then_some(dir)
    }

    /// The newest complete checkpoint folder.
    pub fn latest(&self) -> Option<PathBuf> {
        self.pointer("latest")
    }

    /// The checkpoint with the lowest validation loss (or the newest when none was
    /// validated).
    pub fn best(&self) -> Option<PathBuf> {
        self.pointer("best").or_else(|| self.latest())
    }

    /// Saves the checkpoint of step `step`: the weights, the optimizer's tensors and the
    /// writer's `state` (its state.json); marks it best when `is_best`; keeps the
    /// `keep_last` newest and the best, deleting older ones.
    pub fn save(
        &self,
        step: i64,
        vs: &nn::VarStore,
        optimizer: &[(String, Tensor)],
        state: &impl Serialize,
        is_best: bool,
        keep_last: i64,
    ) -> Result<PathBuf> {
        let name = format!("step-{step:08}");
        let checkpoints = self.path.join("checkpoints");
        let final_dir = checkpoints.join(&name);
        let tmp_dir = checkpoints.join(format!(".{name}.partial"));
        let _ = fs::remove_dir_all(&tmp_dir);
        fs::create_dir_all(&tmp_dir)?;
        vs.save(tmp_dir.join(MODEL_FILE)).context("cannot save model weights")?;
        Tensor::write_safetensors(optimizer, tmp_dir.join(OPTIMIZER_FILE)).context("cannot save optimizer state")?;
        fs::write(tmp_dir.join(STATE_FILE), serde_json::to_string_pretty(state)?)?;
        for file in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
            File::open(tmp_dir.join(file))?.sync_all()?;
        }
        sync_dir(&tmp_dir)?;
        let _ = fs::remove_dir_all(&final_dir);
        fs::rename(&tmp_dir, &final_dir)?;
        sync_dir(&checkpoints)?;
        write_atomic(&self.path.join("latest"), name.as_bytes())?;
        if is_best {
            write_atomic(&self.path.join("best"), name.as_bytes())?;
        }
        self.prune(keep_last)?;
        Ok(final_dir)
    }

    fn prune(&self, keep_last: i64) -> Result<()> {
        let keep: Vec<PathBuf> = [self.pointer("best"), self.latest()].into_iter().flatten().collect();
        let mut steps: Vec<PathBuf> = fs::read_dir(self.path.join("checkpoints"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")))
            .collect();
        steps.sort();
        let n_old = steps.len().saturating_sub(keep_last as usize);
        for old in &steps[..n_old] {
            if !keep.contains(old) {
                fs::remove_dir_all(old).with_context(|| format!("cannot delete old checkpoint {}", old.display()))?;
            }
        }
        Ok(())
    }

    /// Appends one record to metrics.jsonl.
    pub fn log_metrics(&self, record: &serde_json::Value) -> Result<()> {
        let mut file = fs::OpenOptions::new().create(true).append(true).open(self.path.join("metrics.jsonl"))?;
        writeln!(file, "{record}")?;
        Ok(())
    }

    /// Drops metrics records past `step`: a resumed run rewrites them.
    pub fn truncate_metrics(&self, step: i64) -> Result<()> {
        let path = self.path.join("metrics.jsonl");
        let Ok(text) = fs::read_to_string(&path) else { return Ok(()) };
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_i64())
                    .is_some_and(|s| s <= step)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        write_atomic(&path, kept.as_bytes())
    }
}

/// Loads the model of a run folder (its best checkpoint) or of one checkpoint folder.
pub fn load_model(path: &Path, device: Device) -> Result<(nn::VarStore, ReformerLm, RunConfig)> {
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    // A checkpoint folder lives in RUN/checkpoints/; its config is two levels up.
    let (run_path, checkpoint) = if path.join("config.json").exists() {
        let (run, _) = RunDir::open(path)?;
        let best = run.best().with_context(|| format!("{} holds no checkpoint yet", path.display()))?;
        (path.to_path_buf(), best)
    } else {
        let run = path.parent().and_then(Path::parent).context("not a run or checkpoint folder")?;
        (run.to_path_buf(), path.to_path_buf())
    };
    let (_, cfg) = RunDir::open(&run_path)?;
    cfg.model.validate().context("the checkpoint's config.json is invalid")?;
    crate::bench::memory_model::check_parameters_fit(&cfg.model).context("the checkpoint's config.json")?;
    let mut vs = nn::VarStore::new(device);
    let model = ReformerLm::new(vs.root(), &cfg.model);
    load_weights(&mut vs, &checkpoint)?;
    Ok((vs, model, cfg))
}

/// Loads model weights from a checkpoint folder into `vs`.
pub fn load_weights(vs: &mut nn::VarStore, checkpoint: &Path) -> Result<()> {
    let path = weights_file(checkpoint);
    vs.load(&path)
        .with_context(|| format!("cannot load weights from {} (incompatible with config.json?)", path.display()))
}

/// The model's weights in a checkpoint folder.
pub fn weights_file(checkpoint: &Path) -> PathBuf {
    checkpoint.join(MODEL_FILE)
}

/// Loads the optimizer tensors and the state (state.json, as `save` was given it) of a
/// checkpoint folder.
pub fn load_train_state<S: DeserializeOwned>(checkpoint: &Path) -> Result<(Vec<(String, Tensor)>, S)> {
    let optimizer = Tensor::read_safetensors(checkpoint.join(OPTIMIZER_FILE))
        .with_context(|| format!("cannot read optimizer state in {}", checkpoint.display()))?;
    let text = fs::read_to_string(checkpoint.join(STATE_FILE))?;
    let state = serde_json::from_str(&text).with_context(|| format!("bad {STATE_FILE} in {}", checkpoint.display()))?;
    Ok((optimizer, state))
}
