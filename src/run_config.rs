//! The configuration of a run: the model and the training settings, from a preset (a
//! JSON file shipped in `presets/`), a `--config FILE`, and `--set key=value` overrides.
//! The resolved configuration is saved as `config.json` in the run directory.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::path::PathBuf;

use crate::model::config::legacy;
use crate::model::ModelConfig;
use crate::precision::Precision;
use crate::tasks::duplication::{Duplication, DuplicationConfig};
use crate::tasks::{text::TextData, Task, TaskKind, DEFAULT_ENWIK8_PATH};

/// Presets shipped with the binary: (name, JSON).
pub const PRESETS: &[(&str, &str)] = &[
    ("duplication", include_str!("../presets/duplication.json")),
    ("duplication-1k", include_str!("../presets/duplication-1k.json")),
    ("duplication-4k", include_str!("../presets/duplication-4k.json")),
    ("duplication-16k", include_str!("../presets/duplication-16k.json")),
    ("duplication-64k", include_str!("../presets/duplication-64k.json")),
    ("enwik8-cpu", include_str!("../presets/enwik8-cpu.json")),
    ("enwik8-paper", include_str!("../presets/enwik8-paper.json")),
];

/// Learning-rate decay after the linear warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// lr · sqrt(warmup / step), the paper's schedule.
    Rsqrt,
    /// Cosine from lr down to lr · final_lr_fraction at the last step.
    Cosine,
    /// lr throughout.
    Constant,
}

/// What to do when a step's loss or gradient is not finite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    /// Stop the run, keeping the last good checkpoint.
    Stop,
    /// Skip the update and count it.
    Skip,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Tokens per training window for the language-model tasks (default 1024).
    pub seq_len: i64,
    /// Sequences per optimizer step, before accumulation (default 8).
    pub batch_size: i64,
    /// Micro-batches whose gradients are summed before each update (default 1).
    pub grad_accumulation: i64,
    /// Optimizer steps (default 1000), also the cosine schedule's horizon; a run resumed
    /// with another `--steps` keeps its own as the horizon.
    pub steps: i64,
    /// A time budget in minutes of training (default none): the run stops when it is
    /// spent (or at `steps`, whichever comes first) and the cosine decays over the minutes
    /// instead of the steps, so that models of different speeds compared at equal
    /// wall-clock each end their schedule at the budget. The learning rate then follows
    /// the clock: a resumed run does not repeat the uninterrupted one exactly.
    pub minutes: Option<f64>,
    /// Peak learning rate (default 1e-3).
    pub lr: f64,
    /// Steps of linear warm-up (default 100).
    pub warmup_steps: i64,
    /// Decay after warm-up (default rsqrt).
    pub schedule: Schedule,
    /// Cosine schedule: final lr as a fraction of the peak (default 0.1).
    pub final_lr_fraction: f64,
    /// Adam β1 (default 0.9).
    pub adam_beta1: f64,
    /// Adam β2 (default 0.98).
    pub adam_beta2: f64,
    /// Adam ε (default 1e-9).
    pub adam_eps: f64,
    /// Decoupled weight decay on matrices (default 0).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (default 1.0); None: no clipping.
    pub clip_grad_norm: Option<f64>,
    /// Steps between log lines and metrics.jsonl records (default 10).
    pub log_every: i64,
    /// Steps between validations and checkpoints (default 100).
    pub eval_every: i64,
    /// Validation batches, fixed and seeded (default 4).
    pub eval_batches: i64,
    /// Most recent checkpoints kept besides the best (default 2).
    pub keep_last: i64,
    /// Non-finite loss or gradient: stop or skip (default stop). Under f16 an overflowed
    /// gradient is the loss scaler's (the step is skipped), not this policy's.
    pub on_non_finite: NonFinitePolicy,
    /// Arithmetic: f32, or bf16 / f16 autocast, f16 with dynamic loss scaling, or auto
    /// (bf16 on CPUs that compute bfloat16 natively, else f32; decided when a run starts,
    /// config.json records the outcome) (default f32). `eval` and `generate` use it too
    /// unless given `--precision`.
    pub precision: Precision,
    /// The duplication task.
    pub duplication: DuplicationConfig,
    /// Log at each validation, per LSH layer, the fraction of scored queries whose
    /// partner (the first-copy token they must copy) is in their window in at least one
    /// hash round (`partner_reach` in metrics.jsonl, drawn in curve.svg; see
    /// `model::attention::partner_reach`). One more forward pass of the first validation
    /// batch per validation; the duplication task only (default false).
    pub partner_reach: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seq_len: 1024,
            batch_size: 8,
            grad_accumulation: 1,
            steps: 1000,
            minutes: None,
            lr: 1e-3,
            warmup_steps: 100,
            schedule: Schedule::Rsqrt,
            final_lr_fraction: 0.1,
            adam_beta1: 0.9,
            adam_beta2: 0.98,
            adam_eps: 1e-9,
            weight_decay: 0.0,
            clip_grad_norm: Some(1.0),
            log_every: 10,
            eval_every: 100,
            eval_batches: 4,
            keep_last: 2,
            on_non_finite: NonFinitePolicy::Stop,
            precision: Precision::F32,
            duplication: DuplicationConfig::default(),
            partner_reach: false,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("train.seq_len", self.seq_len),
            ("train.batch_size", self.batch_size),
            ("train.grad_accumulation", self.grad_accumulation),
            ("train.log_every", self.log_every),
            ("train.eval_every", self.eval_every),
            ("train.eval_batches", self.eval_batches),
            ("train.keep_last", self.keep_last),
            ("train.duplication.copy_len", self.duplication.copy_len),
        ] {
            if value <= 0 {
                bail!("{name} = {value} must be positive");
            }
        }
        if self.steps < 0 || self.warmup_steps < 0 {
            bail!("train.steps and train.warmup_steps must not be negative");
        }
        if self.minutes.is_some_and(|minutes| minutes <= 0.0 || !minutes.is_finite()) {
            bail!("train.minutes must be a positive number of minutes");
        }
        if self.lr <= 0.0 || !self.lr.is_finite() {
            bail!("train.lr = {} must be a positive number", self.lr);
        }
        if self.duplication.n_symbols < 2 {
            bail!(
                "train.duplication.n_symbols = {} must be at least 2 (0 is the separator)",
                self.duplication.n_symbols
            );
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// What the run learns (default duplication; `--task` replaces it).
    pub task: TaskKind,
    /// The data file of the LM tasks (enwik8 default data/enwik8; `--data` replaces it).
    pub data: Option<PathBuf>,
    pub model: ModelConfig,
    pub train: TrainConfig,
    /// The `--memory-budget` plan that chose `model.execution`, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_plan: Option<crate::memory_plan::PlanRecord>,
}

impl RunConfig {
    /// Tokens per training sequence: the duplication task's (2·copy_len + 1, whatever
    /// `train.seq_len` says) or the text windows' (`train.seq_len`), at most the model's
    /// `max_seq_len`.
    pub fn training_len(&self) -> i64 {
        self.task_len().min(self.model.max_seq_len)
    }

    /// Tokens per training sequence that the task asks for, before the model's
    /// `max_seq_len` caps it.
    pub fn task_len(&self) -> i64 {
        match self.task {
            TaskKind::Duplication => 2 * self.train.duplication.copy_len + 1,
            TaskKind::Enwik8 | TaskKind::Text => self.train.seq_len,
        }
    }

    /// A preset by name, with its JSON file's defaults filled in.
    pub fn preset(name: &str) -> Result<Self> {
        let (_, json) = PRESETS.iter().find(|(n, _)| *n == name).with_context(|| {
            let names: Vec<_> = PRESETS.iter().map(|(n, _)| *n).collect();
            format!("unknown preset '{name}': choose one of {}", names.join(", "))
        })?;
        serde_json::from_str(json).with_context(|| format!("preset '{name}' is malformed"))
    }

    /// A configuration file (JSON, same layout as `config.json`).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("config file {} is not a valid run config", path.display()))
    }

    /// Applies `key=value` overrides: the key is a dotted path (`model.lsh.n_hashes`), the
    /// value JSON (`4`, `true`, `["lsh"]`) or else a plain string.
    pub fn with_overrides(self, overrides: &[String]) -> Result<Self> {
        let mut tree = serde_json::to_value(&self)?;
        for item in overrides {
            let (key, raw) = item.split_once('=').with_context(|| format!("--set '{item}': expected key=value"))?;
            let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
            let (key, value) = match key.strip_prefix("model.") {
                Some(model_key) => {
                    let (current, value) = legacy::current_setting(model_key, value);
                    (format!("model.{current}"), value)
                }
                None => (key.to_string(), value),
            };
            set_path(&mut tree, &key, value)?;
        }
        serde_json::from_value(tree).context("--set gave a setting of the wrong type")
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.train.validate()?;
        if !self.train.partner_reach {
            return Ok(());
        }
        if self.task != TaskKind::Duplication {
            let task = format!("{:?}", self.task).to_lowercase();
            bail!("train.partner_reach is measured on the duplication task only, and this run's task is {task}: leave it false");
        }
        if self.model.n_lsh_layers() == 0 {
            bail!("train.partner_reach measures LSH layers, and model.attention has none: leave it false");
        }
        Ok(())
    }

    /// The task this configuration names (`task`, `data`), its data loaded and checked
    /// against the model.
    pub fn build_task(&self) -> Result<Box<dyn Task>> {
        let task: Box<dyn Task> = match self.task {
            TaskKind::Duplication => Box::new(Duplication::new(self.train.duplication.clone())),
            TaskKind::Enwik8 => {
                let path = self.data.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ENWIK8_PATH));
                if !path.exists() {
                    bail!(
                        "enwik8 not found at {}: add --download to fetch it, or pass --data FILE (see data/README.md)",
                        path.display()
                    );
                }
                Box::new(TextData::load(&path, self.train.seq_len)?)
            }
            TaskKind::Text => {
                let path = self.data.as_deref().context("--task text needs --data FILE")?;
                Box::new(TextData::load(path, self.train.seq_len)?)
            }
        };
        task.check_model(&self.model)?;
        Ok(task)
    }
}

fn set_path(tree: &mut Value, key: &str, value: Value) -> Result<()> {
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let object = match node.as_object_mut() {
            Some(object) => object,
            None => bail!("--set {key}: '{}' is not a group of settings", parts[..i].join(".")),
        };
        if i + 1 == parts.len() {
            if !object.contains_key(*part) {
                bail!("--set {key}: unknown setting '{part}'");
            }
            object.insert(part.to_string(), value);
            return Ok(());
        }
        node = match object.get_mut(*part) {
            Some(child) if child.is_null() => {
                *child = Value::Object(Default::default());
                child
            }
            Some(child) => child,
            None => bail!("--set {key}: unknown setting '{part}'"),
        };
    }
    Ok(())
}
