//! Which cases each suite of `reformer bench` runs: the attention layer over length, the
//! reference training steps, depth, feed-forward chunking, precision, and a preset's
//! model.

use anyhow::{bail, Result};
use tch::Device;

use super::case::{Case, CaseKind, WARMUP_STEPS};
use super::{BenchArgs, Suite};
use crate::model::config::ExecutionConfig;
use crate::model::{AttentionKind, ModelConfig, PositionalConfig};
use crate::precision::Precision;
use crate::run_config::RunConfig;

/// The attention layer of paper-like size (D 256, 4 heads, LSH chunk 64).
fn attention_case(kind: AttentionKind, n_hashes: i64, seq_len: i64, steps: usize) -> Case {
    let mut model = ModelConfig {
        d_model: 256,
        n_heads: 4,
        max_seq_len: seq_len,
        positional: PositionalConfig::None,
        attention: vec![kind],
        ..Default::default()
    };
    model.lsh.n_hashes = n_hashes;
    model.lsh.chunk_len = 64;
    let label = match kind {
        AttentionKind::Lsh => format!("lsh-{n_hashes}"),
        other => format!("{other:?}").to_lowercase(),
    };
    Case {
        suite: "attention".into(),
        label,
        kind: CaseKind::Layer,
        model,
        batch_size: 1,
        seq_len,
        steps,
        warmup_steps: WARMUP_STEPS,
        precision: Precision::F32,
    }
}

/// The three training-step configurations compared with other implementations, each
/// with reversible and with ordinary residual layers.
fn step_cases(steps: usize) -> Vec<Case> {
    let lm = |label: &str, n_layers, d_model, n_heads, d_ff, seq_len: i64, batch_size, n_hashes, reversible| {
        let mut model = ModelConfig {
            d_model,
            n_layers,
            n_heads,
            d_ff,
            max_seq_len: seq_len,
            positional: PositionalConfig::Learned,
            attention: vec![AttentionKind::Lsh],
            execution: ExecutionConfig { reversible, ..Default::default() },
            ..Default::default()
        };
        model.lsh.n_hashes = n_hashes;
        model.lsh.chunk_len = 64;
        let label = format!("{label}{}", if reversible { "" } else { "-plain" });
        Case::step("steps", label, model, batch_size, seq_len, steps)
    };
    [true, false]
        .into_iter()
        .flat_map(|reversible| {
            [
                lm("dup", 1, 256, 4, 256, 1024, 8, 4, reversible),
                lm("lm4k", 6, 256, 4, 1024, 4096, 1, 2, reversible),
                lm("lm16k", 3, 128, 2, 512, 16384, 1, 2, reversible),
            ]
        })
        .collect()
}

/// The precision suite's steps: the reversible lm4k step in float32 and under bfloat16
/// and float16 autocast (float16 left out when `emulated_f16`: CPUs without float16
/// arithmetic emulate it, an order of magnitude slower).
fn precision_cases(steps: usize, emulated_f16: bool) -> Vec<Case> {
    let lm4k = step_cases(steps).into_iter().find(|c| c.label == "lm4k").expect("the steps suite has lm4k");
    [Precision::F32, Precision::Bf16, Precision::F16]
        .into_iter()
        .filter(|&p| !(emulated_f16 && p == Precision::F16))
        .map(|precision| {
            let label = format!("lm4k-{}", precision.name());
            Case { suite: "precision".into(), label, ..lm4k.clone() }.in_precision(precision)
        })
        .collect()
}

/// The depth suite: D 256, 4 heads, d_ff 1024, LSH, at `seq_len` (a power of 4, for the
/// axial positions); reversible or not.
fn depth_cases(seq_len: i64, steps: usize) -> Vec<Case> {
    let side = (seq_len as f64).sqrt().round() as i64; // (side, side) axial positions
    let mut cases = Vec::new();
    for n_layers in [2, 6, 12, 24] {
        for reversible in [true, false] {
            let model = ModelConfig {
                n_layers,
                max_seq_len: seq_len,
                positional: PositionalConfig::Axial { shape: [side, side], dims: [128, 128] },
                attention: vec![AttentionKind::Lsh],
                execution: ExecutionConfig { reversible, ..Default::default() },
                ..Default::default()
            };
            let label = if reversible { "rev" } else { "plain" };
            cases.push(Case::step("depth", label, model, 1, seq_len, steps));
        }
    }
    cases
}

/// Positions per feed-forward chunk in the ff suite.
const FF_CHUNK_LEN: i64 = 1024;

/// The ff suite: training steps of 2 reversible layers of local attention (cheap, so that
/// the feed-forward dominates), D 256, d_ff 2048, the loss computed 1024 positions at a
/// time; the feed-forward whole or `FF_CHUNK_LEN` positions at a time.
fn ff_cases(lengths: &[i64], steps: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    for &seq_len in lengths {
        for ff_chunk_len in [None, Some(FF_CHUNK_LEN)] {
            let model = ModelConfig {
                n_layers: 2,
                d_ff: 2048,
                max_seq_len: seq_len,
                positional: PositionalConfig::None,
                attention: vec![AttentionKind::Local],
                execution: ExecutionConfig { ff_chunk_len, loss_chunk_len: Some(1024), ..Default::default() },
                ..Default::default()
            };
            let label = if ff_chunk_len.is_some() { "ff-chunked" } else { "ff-whole" };
            cases.push(Case::step("ff", label, model, 1, seq_len, steps));
        }
    }
    cases
}

/// Training steps of a configuration's model (a preset's, or a file's, named `name`) at
/// its training length (`RunConfig::training_len`, or each of `lengths`) and batch, and of the same model with full
/// attention in every layer; the first step is timed (no warm-up).
pub fn config_cases(name: &str, cfg: &RunConfig, lengths: Option<&[i64]>, steps: usize) -> Result<Vec<Case>> {
    let trained_len = [cfg.training_len()];
    let full = ModelConfig { attention: vec![AttentionKind::Full], ..cfg.model.clone() };
    let mut cases = Vec::new();
    for &seq_len in lengths.unwrap_or(&trained_len) {
        if seq_len > cfg.model.max_seq_len {
            bail!(
                "--lengths {seq_len} is beyond {name}'s max_seq_len {}: raise it with --set model.max_seq_len (and an axial shape that covers it)",
                cfg.model.max_seq_len
            );
        }
        for (label, model) in [(name.to_string(), &cfg.model), (format!("{name}-full"), &full)] {
            let case = Case::step("preset", label, model.clone(), cfg.train.batch_size, seq_len, steps);
            cases.push(case.without_warmup());
        }
    }
    Ok(cases)
}

pub fn cases(opts: &BenchArgs, device: Device) -> Vec<Case> {
    let quick = opts.quick_sizes(device);
    let default_lengths: &[i64] = match (quick, device) {
        (true, _) => &[1024, 4096, 16384],
        (false, Device::Cuda(_)) => &[1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072],
        (false, _) => &[1024, 2048, 4096, 8192, 16384],
    };
    let lengths = opts.lengths.as_deref().unwrap_or(default_lengths);
    let mut cases = Vec::new();
    if matches!(opts.suite, Suite::Attention | Suite::All) {
        // The paper's regime: LSH is for long sequences; all lengths of the list.
        for &t in lengths {
            for rounds in [1, 2, 4, 8] {
                cases.push(attention_case(AttentionKind::Lsh, rounds, t, opts.steps));
            }
            cases.push(attention_case(AttentionKind::Local, 1, t, opts.steps));
            cases.push(attention_case(AttentionKind::Full, 1, t, opts.steps));
        }
    }
    if matches!(opts.suite, Suite::Steps | Suite::All) {
        cases.extend(step_cases(opts.steps));
    }
    if matches!(opts.suite, Suite::Depth | Suite::All) {
        cases.extend(depth_cases(if quick { 1024 } else { 4096 }, opts.steps));
    }
    if matches!(opts.suite, Suite::Precision | Suite::All) {
        cases.extend(precision_cases(opts.steps, skips_f16(quick, device)));
    }
    if matches!(opts.suite, Suite::Ff | Suite::All) {
        let ff_lengths: &[i64] = if quick { &[16384] } else { &[4096, 16384, 65536] };
        cases.extend(ff_cases(ff_lengths, opts.steps));
    }
    cases
}

/// Whether float16 cases are left out: at CPU sizes on a CPU, which emulates float16.
pub fn skips_f16(quick: bool, device: Device) -> bool {
    quick && !device.is_cuda()
}
