//! `reformer train`: the training loop, with validation, checkpoints, exact resume,
//! graceful interruption and a guard against non-finite losses.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tch::{nn, Device};

use crate::checkpoint::{load_train_state, load_weights, RunDir, TrainState};
use crate::distributed::{self, Backend, LaunchEnv, ProcessGroup};
use crate::evaluate::{evaluate, evaluate_shared, Score};
use crate::model::seeded_random::derive_seed;
use crate::model::{ForwardMode, ReformerLm};
use crate::optimizer::{learning_rate, AdamW};
use crate::progress::Progress;
use crate::run_config::{NonFinitePolicy, RunConfig};
use crate::tasks::download::download_enwik8;
use crate::tasks::{build_task, SamplerRng, Split, TaskKind, DEFAULT_ENWIK8_PATH};

mod args;
mod metrics;
pub use args::TrainArgs;
use metrics::{window_message, MetricsWindow};

/// Hash rounds at which a duplication model is evaluated at the end (paper Table 2).
pub const TABLE2_ROUNDS: [i64; 4] = [1, 2, 4, 8];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    F32,
    /// bfloat16 autocast (CUDA only).
    Bf16,
}

/// Set by the first Ctrl-C / SIGTERM: finish the step, save, stop.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if STOP_REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting now without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing this step and saving a checkpoint (again to exit at once)");
    });
}

/// The preset or file's configuration, with the command line's changes: `--task` and
/// `--data` replace the configured ones when given (data configured for another task
/// does not carry over).
fn resolve_config(opts: &TrainArgs) -> Result<RunConfig> {
    let base = match (&opts.config, &opts.preset) {
        (Some(path), _) => RunConfig::from_file(path)?,
        (None, Some(name)) => RunConfig::preset(name)?,
        (None, None) => RunConfig::preset(opts.task.unwrap_or_default().default_preset())?,
    };
    let mut cfg = base.with_overrides(&opts.set)?;
    if let Some(task) = opts.task.filter(|&task| task != cfg.task) {
        cfg.task = task;
        cfg.data = None;
    }
    if let Some(data) = &opts.data {
        cfg.data = Some(data.clone());
    }
    if let Some(steps) = opts.steps {
        cfg.train.steps = steps;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn default_out(task: TaskKind) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let name = format!("{:?}", task).to_lowercase();
    PathBuf::from("checkpoints").join(format!("{name}-{secs}"))
}

pub fn run(opts: TrainArgs) -> Result<()> {
    let mut device = opts.run.setup()?;
    if opts.precision == Precision::Bf16 && !device.is_cuda() {
        bail!("--precision bf16 autocasts on CUDA only: use --precision f32 on {device:?}");
    }
    let launch = LaunchEnv::from_env()?;
    if let (Some(launch), Device::Cuda(_)) = (&launch, device) {
        device = Device::Cuda(launch.local_rank as usize);
    }
    let (existing_run, cfg) = match &opts.resume {
        Some(dir) => {
            let (run_dir, mut cfg) = RunDir::open(dir)?;
            if let Some(steps) = opts.steps {
                cfg.train.steps = steps;
            }
            cfg.validate()?;
            (Some(run_dir), cfg)
        }
        None => (None, resolve_config(&opts)?),
    };
    if opts.download && cfg.task == TaskKind::Enwik8 {
        let path = cfg.data.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ENWIK8_PATH));
        if !path.exists() {
            eprintln!("downloading enwik8 to {}", path.display());
            download_enwik8(&path)?;
        }
    }
    // The data is checked before anything is written.
    let task = build_task(&cfg)?;
    let group = match &launch {
        Some(launch) => {
            let backend = opts.dist_backend.unwrap_or_else(|| Backend::default_for(device));
            Some(ProcessGroup::join(launch, backend, device, opts.dist_timeout)?)
        }
        None => None,
    };
    let group = group.as_ref();
    // Rank 0 alone writes: the run folder, metrics, checkpoints, progress.
    let is_main = group.is_none_or(ProcessGroup::is_main);
    let out = opts.out.clone().unwrap_or_else(|| default_out(cfg.task));
    let run_dir = match existing_run {
        Some(run_dir) => run_dir,
        None if is_main => RunDir::create(&out, &cfg)?,
        None => RunDir::unwritten(&out),
    };
    if let Some(group) = group {
        // The other ranks open the folder only once rank 0 has made it.
        group.barrier()?;
        if is_main {
            eprintln!("data parallel: {} workers, {} sequences each per step", group.world_size, cfg.train.batch_size);
        }
    }
    if is_main {
        eprintln!("config: {}", serde_json::to_string(&cfg)?);
    }

    tch::manual_seed(opts.run.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let mut model = ReformerLm::new(vs.root(), &cfg.model);
    let mut optimizer = AdamW::new(&vs, &cfg.train);
    let n_params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    let mut state = TrainState {
        step: 0,
        seed: opts.run.seed,
        sampler: SamplerRng::new(derive_seed(opts.run.seed, 0x5A_4D_9E)),
        n_updates: 0,
        best_valid_loss: None,
        skipped_steps: 0,
        elapsed_secs: 0.0,
    };
    if opts.resume.is_some() {
        let checkpoint =
            run_dir.latest().with_context(|| format!("{} has no checkpoint to resume", run_dir.path.display()))?;
        load_weights(&mut vs, &checkpoint)?;
        let (optimizer_state, saved) = load_train_state(&checkpoint)?;
        optimizer.load_state(optimizer_state, saved.n_updates)?;
        state = saved;
        if is_main {
            run_dir.truncate_metrics(state.step)?;
            eprintln!("resuming {} at step {}", checkpoint.display(), state.step);
        }
    }
    let variables = vs.trainable_variables();
    if let Some(group) = group {
        distributed::broadcast_parameters(group, &variables)?;
    }
    if is_main {
        eprintln!(
            "model: {n_params} parameters on {}; run folder {}",
            crate::device::describe(device),
            run_dir.path.display()
        );
    }

    install_interrupt_handler();
    let train = &cfg.train;
    // Evaluation batches hold every rank's sequences (rank r scores its share), so the
    // scores are over the same sequences whatever the number of workers.
    let (rank, world_size) = group.map_or((0, 1), |g| (g.rank, g.world_size));
    let valid_batches = task.valid_batches(train.batch_size * world_size, train.eval_batches);
    let started = Instant::now();
    let elapsed_before = state.elapsed_secs;
    let time_limit = opts.time_limit_minutes.map(|m| m * 60.0);
    let mut progress = if is_main { Progress::new("train", train.steps as u64) } else { Progress::silent() };
    let mut all_reduce_secs = 0.0;
    let mut window = MetricsWindow::default();
    let mut last_saved = if opts.resume.is_some() { state.step } else { -1 };
    let mut last_valid: Option<Score> = None;

    while state.step < train.steps {
        let interrupted = STOP_REQUESTED.load(Ordering::SeqCst);
        let out_of_time = time_limit.is_some_and(|limit| elapsed_before + started.elapsed().as_secs_f64() >= limit);
        // Every rank stops at the same step: when any of them is asked to.
        let [interrupted, out_of_time] = agree_any(group, [interrupted, out_of_time])?;
        if interrupted {
            STOP_REQUESTED.store(true, Ordering::SeqCst);
            progress.println("stopping at the interrupt");
            break;
        }
        if out_of_time {
            progress.println("time limit reached");
            break;
        }
        window.begin_step();
        let lr = learning_rate(train, state.step);
        optimizer.zero_grad();
        let (mut loss_sum, mut correct, mut weight, mut tokens) = (0.0, 0.0, 0.0, 0i64);
        for micro in 0..train.grad_accumulation {
            // Every rank draws the whole step's sequences and keeps its own share, so the
            // ranks read disjoint parts of one seeded stream.
            let batch = task.train_batch(train.batch_size * world_size, &mut state.sampler);
            let batch = batch.rows(rank * train.batch_size, train.batch_size).to_device(device);
            let mode =
                ForwardMode::train(derive_seed(state.seed, (state.step * train.grad_accumulation + micro) as u64));
            let stats = tch::autocast(opts.precision == Precision::Bf16, || {
                model.loss(&batch.inputs, &batch.targets, Some(&batch.weights), mode)
            });
            (&stats.loss / train.grad_accumulation as f64).backward();
            loss_sum += stats.loss.double_value(&[]) * stats.weight;
            correct += stats.correct;
            weight += stats.weight;
            tokens += batch.n_tokens();
        }
        if let Some(group) = group {
            let reduce_started = Instant::now();
            distributed::average_gradients(group, &variables, distributed::BUCKET_BYTES)?;
            let sums = group.sum_f64(&[loss_sum, correct, weight, tokens as f64])?;
            (loss_sum, correct, weight, tokens) = (sums[0], sums[1], sums[2], sums[3] as i64);
            all_reduce_secs += reduce_started.elapsed().as_secs_f64();
        }
        let loss = loss_sum / weight.max(1.0) + injected_fault(state.step + 1);
        let grad_norm = optimizer.clip_grad_norm(train.clip_grad_norm);
        if !loss.is_finite() || !grad_norm.is_finite() {
            let what = format!("step {}: non-finite loss {loss} or gradient norm {grad_norm}", state.step + 1);
            match train.on_non_finite {
                NonFinitePolicy::Stop => {
                    progress.finish();
                    bail!("{what}; stopped. The last good checkpoint is in {}", run_dir.path.display());
                }
                NonFinitePolicy::Skip => {
                    progress.println(&format!("{what}; update skipped"));
                    state.skipped_steps += 1;
                    state.step += 1;
                    continue;
                }
            }
        }
        optimizer.step(lr);
        injected_divergence(rank, state.step + 1, &variables);
        state.step += 1;
        state.n_updates = optimizer.n_updates;
        state.elapsed_secs = elapsed_before + started.elapsed().as_secs_f64();
        window.add(loss * weight, correct, weight, tokens);

        if state.step % train.log_every == 0 || state.step == train.steps {
            let mut record = window.flush(state.step, lr, state.elapsed_secs, task.reports_bpc());
            if let Some(group) = group {
                distributed::check_parameters_agree(group, &variables)?;
                record["world_size"] = json!(group.world_size);
                record["all_reduce_secs_per_step"] = json!(all_reduce_secs / train.log_every as f64);
                all_reduce_secs = 0.0;
            }
            progress.update(state.step as u64, window_message(&record));
            if is_main {
                run_dir.log_metrics(&record)?;
            }
        }
        if state.step % train.eval_every == 0 || state.step == train.steps {
            let score = evaluate_shared(&model, &valid_batches, device, group)?;
            let (is_best, line) = record_validation(&score, &mut state, &run_dir, task.reports_bpc(), is_main)?;
            progress.println(&line);
            if is_main {
                run_dir.save(&vs, &optimizer.state(), &state, is_best, train.keep_last)?;
            }
            last_saved = state.step;
            last_valid = Some(score);
        }
    }
    progress.finish();
    if last_saved != state.step {
        if STOP_REQUESTED.load(Ordering::SeqCst) {
            // Interrupted: save at once (a second Ctrl-C may follow), validate after.
            if is_main {
                run_dir.save(&vs, &optimizer.state(), &state, false, train.keep_last)?;
            }
        } else {
            // The time limit: this checkpoint is validated, and may be the best.
            let score = evaluate_shared(&model, &valid_batches, device, group)?;
            let (is_best, line) = record_validation(&score, &mut state, &run_dir, task.reports_bpc(), is_main)?;
            if is_main {
                eprintln!("{line}");
                run_dir.save(&vs, &optimizer.state(), &state, is_best, train.keep_last)?;
            }
            last_valid = Some(score);
        }
        last_saved = state.step;
    }
    let valid = match last_valid {
        Some(score) if last_saved == state.step => score,
        _ => evaluate_shared(&model, &valid_batches, device, group)?,
    };
    let tokens_per_sec = window.total_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let mut summary = json!({
        "task": cfg.task, "steps": state.step, "skipped_steps": state.skipped_steps,
        "valid_loss": valid.loss, "tokens_per_sec": tokens_per_sec, "elapsed_secs": state.elapsed_secs,
        "checkpoint": run_dir.latest().map(|p| p.display().to_string()),
    });
    if is_main {
        eprintln!("final validation: {}", describe_score(&valid, task.reports_bpc()));
    }
    if task.reports_bpc() {
        summary["valid_bpc"] = json!(valid.bpc);
        let test_batches = task.split_batches(Split::Test, train.batch_size * world_size, opts.eval_bytes)?;
        let test = evaluate_shared(&model, &test_batches, device, group)?;
        if is_main {
            eprintln!("test: {:.4} bits per byte over {} bytes", test.bpc, test.n_targets);
        }
        summary["test_bpc"] = json!(test.bpc);
    } else {
        summary["valid_accuracy"] = json!(valid.accuracy);
        if is_main {
            summary["accuracy_by_rounds"] = table2_row(&mut model, &valid_batches, device);
        }
    }
    if let Some(group) = group {
        summary["world_size"] = json!(group.world_size);
        // No rank leaves (and tears down the group) while another still evaluates.
        group.barrier()?;
    }
    if opts.json && is_main {
        println!("{summary}");
    }
    Ok(())
}

/// For each flag, whether any rank raised it (without a group: the flag itself).
fn agree_any<const N: usize>(group: Option<&ProcessGroup>, flags: [bool; N]) -> Result<[bool; N]> {
    let Some(group) = group else { return Ok(flags) };
    let sums = group.sum_f64(&flags.map(|f| if f { 1.0 } else { 0.0 }))?;
    Ok(std::array::from_fn(|i| sums[i] > 0.0))
}

/// Logs a validation score of step `state.step` and updates the best loss; returns
/// whether this score is the best so far, and the line to print.
fn record_validation(
    score: &Score,
    state: &mut TrainState,
    run_dir: &RunDir,
    bpc: bool,
    write: bool,
) -> Result<(bool, String)> {
    let is_best = state.best_valid_loss.is_none_or(|best| score.loss < best);
    if is_best {
        state.best_valid_loss = Some(score.loss);
    }
    if write {
        run_dir.log_metrics(&json!({"step": state.step, "valid_loss": score.loss, "valid_bpc": score.bpc,
            "valid_accuracy": score.accuracy, "elapsed": state.elapsed_secs}))?;
    }
    Ok((is_best, format!("step {}: validation {}", state.step, describe_score(score, bpc))))
}

/// Fault injection for tests of the guard that keeps the ranks' parameters equal:
/// `REFORMER_INJECT_DIVERGENCE_AT_STEP=N` makes rank 1 nudge a parameter after step N's
/// update, as a rank that went its own way would.
fn injected_divergence(rank: i64, step: i64, variables: &[tch::Tensor]) {
    let target = std::env::var("REFORMER_INJECT_DIVERGENCE_AT_STEP").ok().and_then(|v| v.parse::<i64>().ok());
    if rank == 1 && target == Some(step) {
        tch::no_grad(|| {
            let mut first = variables[0].shallow_clone();
            first += 1e-3;
        });
    }
}

/// Fault injection for tests of the non-finite guard: `REFORMER_INJECT_NAN_AT_STEP=N`
/// makes step N's loss NaN, as a numerical blow-up would.
fn injected_fault(step: i64) -> f64 {
    let target = std::env::var("REFORMER_INJECT_NAN_AT_STEP").ok().and_then(|v| v.parse::<i64>().ok());
    if target == Some(step) {
        f64::NAN
    } else {
        0.0
    }
}

/// Accuracy with 1, 2, 4 and 8 hash rounds (and full attention: not swapped in here),
/// printed like a row of the paper's Table 2.
fn table2_row(model: &mut ReformerLm, batches: &[crate::tasks::Batch], device: Device) -> serde_json::Value {
    let trained = model.cfg.lsh.n_hashes;
    let mut row = serde_json::Map::new();
    let mut line = format!("trained with {trained} rounds, evaluated with:");
    for rounds in TABLE2_ROUNDS {
        model.set_n_hashes(rounds);
        let score = evaluate(model, batches, device);
        line += &format!("  {rounds}: {:.1}%", 100.0 * score.accuracy);
        row.insert(rounds.to_string(), json!(score.accuracy));
    }
    model.set_n_hashes(trained);
    eprintln!("{line}");
    serde_json::Value::Object(row)
}

fn describe_score(score: &Score, bpc: bool) -> String {
    if bpc {
        format!("loss {:.4}, {:.4} bits per byte", score.loss, score.bpc)
    } else {
        format!("loss {:.4}, second-copy accuracy {:.2}%", score.loss, 100.0 * score.accuracy)
    }
}
