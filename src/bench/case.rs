//! One benchmark case, run inside its own process: build the model or layer, warm up,
//! time the steps, and read the process's peak memory.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::memory_plan::budget::process_peak_bytes;
use crate::memory_plan::step_time::{attention_core_flops, projection_flops, ForwardFlops};
use crate::model::attention::lsh::LshParams;
use crate::model::attention::lsh_path::LshPath;
use crate::model::attention::Attention;
use crate::model::{AttentionKind, ForwardMode, ModelConfig, ReformerLm};
use crate::optimizer::AdamW;
use crate::precision::Precision;
use crate::run_config::TrainConfig;

/// Warm-up steps before timing (the first steps pay for allocation and kernel choice).
pub const WARMUP_STEPS: usize = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseKind {
    /// Forward and backward of one attention layer on random input.
    Layer,
    /// One whole training step of the LM: forward, loss, backward, Adam.
    Step,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Case {
    pub suite: String,
    pub label: String,
    pub kind: CaseKind,
    pub model: ModelConfig,
    pub batch_size: i64,
    pub seq_len: i64,
    pub steps: usize,
    /// Untimed steps first (allocation, kernel choice).
    pub warmup_steps: usize,
    /// The forward pass under autocast to this precision (the backward outside it).
    #[serde(default)]
    pub precision: Precision,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Measurement {
    pub ms_per_step: f64,
    pub us_per_token: f64,
    pub tokens_per_sec: f64,
    /// Peak memory in bytes: on CPU the peak resident memory above the process's
    /// baseline after libtorch started; on CUDA the caching allocator's peak of allocated
    /// bytes (reset when the case starts).
    pub peak_bytes: i64,
    /// Every timed step, in milliseconds.
    pub step_ms: Vec<f64>,
    /// The whole process's peak: on CPU its peak resident memory, libtorch included; on
    /// CUDA the caching allocator's peak reservation and the CUDA context (what
    /// `--memory-budget` counts). 0 in reports before it was recorded.
    #[serde(default)]
    pub process_peak_bytes: i64,
}

impl Case {
    /// Whole training steps of `model` on batches of `batch_size` × `seq_len` tokens.
    pub fn step(
        suite: &str,
        label: impl Into<String>,
        model: ModelConfig,
        batch_size: i64,
        seq_len: i64,
        steps: usize,
    ) -> Self {
        let (suite, label) = (suite.into(), label.into());
        Self {
            suite,
            label,
            kind: CaseKind::Step,
            model,
            batch_size,
            seq_len,
            steps,
            warmup_steps: WARMUP_STEPS,
            precision: Precision::F32,
        }
    }

    /// The case with its first step timed: for steps so long (a preset's model at its
    /// training length) that a warm-up would double the run for little change.
    pub fn without_warmup(self) -> Self {
        Self { warmup_steps: 0, ..self }
    }

    /// The case with its forward under autocast to `precision`.
    pub fn in_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    /// Rows per forward and backward pass: the batch, or its micro-batches
    /// (`execution.micro_batch_rows`) in training steps.
    pub fn pass_rows(&self) -> i64 {
        match self.kind {
            CaseKind::Step => self.model.execution.pass_rows(self.batch_size),
            CaseKind::Layer => self.batch_size,
        }
    }

    pub fn attention(&self) -> AttentionKind {
        self.model.attention[0]
    }

    /// The path the case's LSH layers take on `device` (`lsh_fused::path_name`), or "-"
    /// without LSH layers.
    pub fn lsh_path(&self, device: Device) -> String {
        if !self.model.attention.contains(&AttentionKind::Lsh) {
            return "-".into();
        }
        let kind = self.precision.compute_kind(device);
        LshPath::choose(&LshParams::new(&self.model), kind, device, ForwardMode::train(0), 0).name()
    }

    /// Model FLOPs per token of one training step (forward + backward = 3 × forward,
    /// `step_time::ForwardFlops`), of one attention layer for `CaseKind::Layer`.
    pub fn flops_per_token(&self) -> f64 {
        let forward = match self.kind {
            CaseKind::Layer => {
                projection_flops(&self.model, self.attention())
                    + attention_core_flops(&self.model, self.attention(), self.seq_len)
            }
            CaseKind::Step => ForwardFlops::of(&self.model, self.seq_len).total(),
        };
        3.0 * forward
    }
}

/// Resident memory of this process (VmRSS) or its peak (VmHWM), in bytes.
pub fn process_memory(field: &str) -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<i64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    sorted[sorted.len() / 2]
}

/// Runs the case in this process and measures it.
pub fn run_case(case: &Case, device: Device) -> Result<Measurement> {
    case.model.validate().context("bench case has an invalid model")?;
    let _ = Tensor::ones([8, 8], (Kind::Float, device)).matmul(&Tensor::ones([8, 8], (Kind::Float, device)));
    let baseline = process_memory("VmRSS:");
    if let Device::Cuda(index) = device {
        crate::device::reset_cuda_peak(index)?;
    }
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let precision = case.precision;
    let mut step: Box<dyn FnMut(usize)> = match case.kind {
        CaseKind::Layer => {
            let layer = Attention::new(vs.root(), &case.model, case.attention());
            let x = Tensor::randn([case.batch_size, case.seq_len, case.model.d_model], (Kind::Float, device))
                .set_requires_grad(true);
            Box::new(move |i| {
                let out = precision.autocast(device, || layer.forward(&x, ForwardMode::train(i as u64)));
                out.expect("autocast state").sum(Kind::Float).backward();
            })
        }
        CaseKind::Step => {
            let model = ReformerLm::new(vs.root(), &case.model);
            let mut optimizer = AdamW::new(&vs, &TrainConfig::default());
            let tokens = Tensor::randint(
                case.model.vocab_size - case.model.compat.token_offset,
                [case.batch_size, case.seq_len + 1],
                (Kind::Int64, device),
            );
            let (inputs, targets) = (tokens.narrow(1, 0, case.seq_len), tokens.narrow(1, 1, case.seq_len));
            let (batch_size, pass_rows) = (case.batch_size, case.pass_rows());
            Box::new(move |i| {
                optimizer.zero_grad();
                for start in (0..batch_size).step_by(pass_rows as usize) {
                    let rows = pass_rows.min(batch_size - start);
                    let mode = ForwardMode::train(i as u64).in_batch(start, batch_size);
                    let (inputs, targets) = (inputs.narrow(0, start, rows), targets.narrow(0, start, rows));
                    let stats = precision.autocast(device, || model.loss(&inputs, &targets, None, mode));
                    let share = rows as f64 / batch_size as f64;
                    (stats.expect("autocast state").loss * share).backward();
                }
                optimizer.clip_grad_norm(Some(1.0));
                optimizer.step(1e-4);
            })
        }
    };
    let mut step_ms = Vec::new();
    for i in 0..case.warmup_steps + case.steps {
        let started = Instant::now();
        step(i);
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
        if i >= case.warmup_steps {
            step_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let ms = median(&step_ms);
    let tokens = (case.batch_size * case.seq_len) as f64;
    Ok(Measurement {
        ms_per_step: ms,
        us_per_token: ms * 1e3 / tokens,
        tokens_per_sec: tokens / (ms / 1e3),
        peak_bytes: match device {
            Device::Cuda(index) => crate::device::cuda_peak_allocated(index)?,
            _ => process_memory("VmHWM:") - baseline,
        },
        process_peak_bytes: process_peak_bytes(device) as i64,
        step_ms,
    })
}
