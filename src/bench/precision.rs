//! The precision suite's measurements beyond step time and memory: how much the
//! reversible backward loses when it rebuilds every block's inputs from the stack's
//! output by subtraction (x2 = y2 − G(y1), x1 = y1 − F(x2)), compared with the inputs the
//! forward actually saw; and what a short duplication run reaches, per precision.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::model::attention::bucket_tape::BucketTape;
use crate::model::reversible::reconstruct_inputs;
use crate::model::{AttentionKind, ForwardMode, ModelConfig, PositionalConfig, ReformerLm};
use crate::precision::Precision;

/// How the reconstruction is computed: parameters and streams in `kind`, the forward
/// under autocast to `precision`.
#[derive(Clone, Copy, Debug)]
pub struct Arithmetic {
    pub label: &'static str,
    pub kind: Kind,
    pub precision: Precision,
}

/// float32; bfloat16 and float16 autocast (float32 parameters and residual streams, as
/// training runs them); and everything in bfloat16 (parameters and streams too).
pub const ARITHMETICS: [Arithmetic; 4] = [
    Arithmetic { label: "f32", kind: Kind::Float, precision: Precision::F32 },
    Arithmetic { label: "bf16-autocast", kind: Kind::Float, precision: Precision::Bf16 },
    Arithmetic { label: "f16-autocast", kind: Kind::Float, precision: Precision::F16 },
    Arithmetic { label: "bf16-weights", kind: Kind::BFloat16, precision: Precision::F32 },
];

#[derive(Debug, Serialize, Deserialize)]
pub struct ReconstructionError {
    pub n_layers: i64,
    pub arithmetic: String,
    /// max over blocks of ‖rebuilt − true‖ / ‖true‖ (both streams), for the first block
    /// (the error accumulated over the whole depth) and the worst block.
    pub first_block: f64,
    pub worst_block: f64,
}

fn relative(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    ((&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)).max(0.0)
}

/// The reconstruction error of an LM of `n_layers` [local, lsh] blocks (D 256, 4 heads,
/// d_ff 1024, dropout 0.1) on random bytes, in `arithmetic`. The rebuilding replays the
/// forward's autocast state and LSH buckets, as the reversible backward does.
pub fn measure(n_layers: i64, arithmetic: Arithmetic, seq_len: i64, device: Device) -> ReconstructionError {
    let mut cfg = ModelConfig {
        n_layers,
        max_seq_len: seq_len,
        positional: PositionalConfig::Learned,
        attention: vec![AttentionKind::Local, AttentionKind::Lsh],
        dropout_hidden: 0.1,
        dropout_attention: 0.1,
        dropout_ff: 0.1,
        ..Default::default()
    };
    cfg.lsh.chunk_len = 64;
    tch::manual_seed(1);
    let mut vs = nn::VarStore::new(device);
    let model = ReformerLm::new(vs.root(), &cfg);
    vs.set_kind(arithmetic.kind);
    let tokens = Tensor::randint(256, [1, seq_len], (Kind::Int64, device));
    let mode = ForwardMode::train(7);
    let tape = BucketTape::default();
    let errors: Vec<f64> = arithmetic
        .precision
        .autocast(device, || {
            tape.run(|| {
                tch::no_grad(|| {
                    let x = model.embed(&tokens, mode);
                    let mut inputs = Vec::new();
                    let (mut x1, mut x2) = (x.shallow_clone(), x);
                    for (i, block) in model.blocks.iter().enumerate() {
                        inputs.push((x1.shallow_clone(), x2.shallow_clone()));
                        (x1, x2) = block.forward(&x1, &x2, mode.child(i as u64));
                    }
                    let rebuilt = reconstruct_inputs(&model.blocks, &x1, &x2, mode);
                    inputs
                        .iter()
                        .zip(&rebuilt)
                        .map(|((a1, a2), (b1, b2))| relative(b1, a1).max(relative(b2, a2)))
                        .collect()
                })
            })
        })
        .expect("autocast state");
    ReconstructionError {
        n_layers,
        arithmetic: arithmetic.label.into(),
        first_block: errors[0],
        worst_block: errors.iter().cloned().fold(0.0, f64::max),
    }
}

/// What `reformer train --preset duplication` reached (its 1,000 steps: the task is
/// learnt suddenly, at chance for the first few hundred steps, near 100% at the end).
#[derive(Debug, Serialize, Deserialize)]
pub struct DuplicationRun {
    pub precision: Precision,
    pub steps: i64,
    pub valid_loss: f64,
    pub valid_accuracy: f64,
    pub elapsed_secs: f64,
}

/// Trains the duplication preset under `precision` in a child process of this binary (a
/// run folder in a temporary directory, removed after) and reads its summary.
pub fn duplication_run(precision: Precision, device: Device, threads: Option<usize>) -> Result<DuplicationRun> {
    let out = std::env::temp_dir().join(format!("reformer-bench-dup-{}-{}", precision.name(), std::process::id()));
    let exe = std::env::current_exe().context("cannot find the reformer binary")?;
    let mut command = Command::new(exe);
    command.args(["train", "--preset", "duplication", "--json", "--precision", precision.name()]);
    command.arg("--out").arg(&out);
    command.arg("--device").arg(super::device_arg(device));
    if let Some(threads) = threads {
        command.arg("--threads").arg(threads.to_string());
    }
    let output = command.output().context("cannot start a training child process")?;
    let _ = std::fs::remove_dir_all(&out);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("the {} duplication run failed: {}", precision.name(), stderr.lines().last().unwrap_or(""));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).context("the duplication run printed no summary")?;
    let number = |key: &str| summary[key].as_f64().with_context(|| format!("the summary has no {key}"));
    Ok(DuplicationRun {
        precision,
        steps: summary["steps"].as_i64().context("the summary has no steps")?,
        valid_loss: number("valid_loss")?,
        valid_accuracy: number("valid_accuracy")?,
        elapsed_secs: number("elapsed_secs")?,
    })
}
