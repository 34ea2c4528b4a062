//! One optimizer step: forward and backward over the step's micro-batches (this rank's
//! share), the gradients averaged over the ranks, unscaled (float16) and clipped, then
//! the update, or a skip or a stop when the loss or the gradients are not finite.

use std::time::Instant;

use anyhow::Result;

use super::stopping::Stop;
use super::Trainer;
use crate::distributed;
use crate::model::seeded_random::derive_seed;
use crate::model::ForwardMode;
use crate::optimizer::learning_rate;
use crate::run_config::NonFinitePolicy;
use crate::train::loss_scale::LossScale;

impl Trainer {
    /// One optimizer step over `train.grad_accumulation` micro-batches, the gradients
    /// averaged over the ranks, unscaled (f16) and clipped. A non-finite loss or gradient
    /// skips the update (the step still counts) or, under `train.on_non_finite=stop`,
    /// returns the stop. Under f16 an overflowed gradient (with a finite loss) is the loss
    /// scaler's: the update is skipped, the step still counts (its batch is consumed, the
    /// learning-rate schedule moves on, as with PyTorch's GradScaler) and the scale backs off.
    pub fn step(&mut self) -> Result<Option<Stop>> {
        self.window.begin_step();
        let lr = learning_rate(&self.cfg.train, self.state.step, self.schedule_clock()?);
        self.last_lr = lr;
        self.optimizer.zero_grad();
        let (loss_sum, correct, weight, tokens) = self.accumulate_gradients()?;
        let step = self.state.step + 1;
        self.faults.overflow(step, &self.variables);
        if let Some(scaler) = &self.state.loss_scale {
            scaler.unscale(&self.variables);
        }
        let loss = loss_sum / weight.max(1.0) + self.faults.loss_offset(step);
        let grad_norm = self.optimizer.clip_grad_norm(self.cfg.train.clip_grad_norm);
        // A non-finite loss is not float16's range at fault (the scale applies after the
        // loss): it leaves the scale as it is and goes to the guard below.
        let overflowed = match self.state.loss_scale.as_mut() {
            Some(scaler) if loss.is_finite() => {
                scaler.update(!grad_norm.is_finite());
                !grad_norm.is_finite()
            }
            _ => false,
        };
        if let Some(why) = self.state.loss_scale.as_ref().and_then(LossScale::exhausted) {
            return Ok(Some(Stop::NonFinite(format!("step {step}: {why}"))));
        }
        if overflowed {
            let scale = self.state.loss_scale.as_ref().map_or(f64::NAN, |scaler| scaler.scale);
            self.progress
                .println(&format!("step {step}: float16 gradients overflowed; update skipped, loss scale {scale}"));
        } else if loss.is_finite() && grad_norm.is_finite() {
            self.optimizer.step(lr);
            self.faults.diverge(self.rank(), step, &self.variables);
            self.window.add(loss * weight, correct, weight, tokens);
        } else {
            let what = format!("step {step}: non-finite loss {loss} or gradient norm {grad_norm}");
            match self.cfg.train.on_non_finite {
                NonFinitePolicy::Stop => return Ok(Some(Stop::NonFinite(what))),
                NonFinitePolicy::Skip => {
                    self.progress.println(&format!("{what}; update skipped"));
                    self.state.skipped_steps += 1;
                }
            }
        }
        self.state.step = step;
        self.state.n_updates = self.optimizer.n_updates;
        self.state.elapsed_secs = self.elapsed_secs();
        Ok(None)
    }

    /// Forward and backward passes over this rank's share of the step's micro-batches,
    /// then the gradients averaged over the ranks. Returns the step's summed loss
    /// (weighted), correct predictions, scored targets and tokens over all ranks.
    ///
    /// The micro-batches compute what this rank's share of the step's whole batch would:
    /// they share the step's seed (so the same LSH rotations), each one's dropout masks
    /// are its rows' share of the whole batch's, and each one's mean loss counts by its
    /// share of the scored targets. Each micro-batch is computed
    /// `model.execution.micro_batch_rows` rows at a time, the same way.
    fn accumulate_gradients(&mut self) -> Result<(f64, f64, f64, i64)> {
        let train = &self.cfg.train;
        let (rank, world_size) = (self.rank(), self.world_size());
        let (rows, micro_batches) = (train.batch_size, train.grad_accumulation);
        // Every rank draws the whole step's sequences and keeps its own share, so the
        // ranks read disjoint parts of one seeded stream: micro-batch m of rank r holds
        // rows (m·world_size + r)·rows.. of the step's whole batch.
        let batches: Vec<_> = (0..micro_batches)
            .map(|_| self.task.train_batch(rows * world_size, &mut self.state.sampler).rows(rank * rows, rows))
            .collect();
        let rank_weight: f64 = batches.iter().map(|b| b.weights.sum(tch::Kind::Double).double_value(&[])).sum();
        let seed = derive_seed(self.state.seed, self.state.step as u64);
        let whole_rows = rows * micro_batches * world_size;
        let (mut loss_sum, mut correct, mut weight, mut tokens) = (0.0, 0.0, 0.0, 0i64);
        let pieces = batches.iter().enumerate().flat_map(|(micro, batch)| {
            let first_row = (micro as i64 * world_size + rank) * rows;
            batch
                .pieces(self.cfg.model.execution.micro_batch_rows)
                .into_iter()
                .map(move |(start, b)| (first_row + start, b))
        });
        for (first_row, batch) in pieces {
            let batch = batch.to_device(self.device);
            let mode = ForwardMode::train(seed).in_batch(first_row, whole_rows);
            let stats = train
                .precision
                .autocast(self.device, || self.model.loss(&batch.inputs, &batch.targets, Some(&batch.weights), mode))?;
            let loss = &stats.loss * (stats.weight / rank_weight.max(f64::MIN_POSITIVE));
            match &self.state.loss_scale {
                Some(scaler) => scaler.scale(&loss).backward(),
                None => loss.backward(),
            }
            loss_sum += stats.loss.double_value(&[]) * stats.weight;
            correct += stats.correct;
            weight += stats.weight;
            tokens += batch.n_tokens();
        }
        if let Some(group) = &self.group {
            let reduce_started = Instant::now();
            distributed::average_gradients(group, &self.variables, distributed::BUCKET_BYTES)?;
            let sums = group.sum_f64(&[loss_sum, correct, weight, tokens as f64])?;
            (loss_sum, correct, weight, tokens) = (sums[0], sums[1], sums[2], sums[3] as i64);
            self.all_reduce_secs += reduce_started.elapsed().as_secs_f64();
        }
        Ok((loss_sum, correct, weight, tokens))
    }
}
