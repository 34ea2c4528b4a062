//! Mixed precision on the CPU (libtorch autocast to bfloat16 and float16): a model's loss
//! stays near its float32 value and nothing becomes NaN or infinite, also where a query
//! has nothing to see but itself (the first positions, padding, the strict causal rule).

mod common;

use reformer::model::config::WindowRule;
use reformer::model::seeded_random;
use reformer::model::{ForwardMode, ModelConfig, ReformerLm};
use reformer::precision::Precision;
use tch::{nn, Device, Kind, Tensor};

/// Loss gap allowed against float32, in nats (the loss is ~3.5 here). bfloat16 keeps 8
/// significant bits (relative rounding 2^-9 ≈ 2e-3 per operation), float16 11 (2^-12).
/// Measured on these models: 0.0007-0.0014 (bfloat16), 0.00004-0.00026 (float16); the
/// bounds are about seven times those.
const BF16_LOSS_TOLERANCE: f64 = 0.01;
const F16_LOSS_TOLERANCE: f64 = 0.002;

fn config(strict_causal: bool, reversible: bool) -> ModelConfig {
    let mut cfg = common::tiny_model_config();
    cfg.execution.reversible = reversible;
    cfg.lsh.window = if strict_causal { WindowRule::Strict } else { WindowRule::Paper };
    cfg.validate().unwrap();
    cfg
}

/// Standard deviation of the weights; query/key weights four times larger, so that
/// attention is far from uniform.
const WEIGHT_STD: f64 = 0.1;
const QK_WEIGHT_STD: f64 = 0.4;

/// A model of `cfg` with weights drawn from explicit seeds, the same on every run.
fn model(cfg: &ModelConfig) -> (nn::VarStore, ReformerLm) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ReformerLm::new(vs.root(), cfg);
    common::draw_weights(&vs, WEIGHT_STD, QK_WEIGHT_STD);
    (vs, model)
}

/// Loss and gradients of one batch of 13 tokens (padded to two chunks) under `precision`.
fn loss_and_grads(vs: &nn::VarStore, model: &ReformerLm, precision: Precision) -> (f64, Vec<Tensor>) {
    let uniform = seeded_random::uniform(6, &[2, 14], Device::Cpu);
    let tokens = (uniform * 32.0).to_kind(Kind::Int64);
    let (inputs, targets) = (tokens.narrow(1, 0, 13), tokens.narrow(1, 1, 13));
    let mode = ForwardMode::train(7);
    let mut variables = vs.trainable_variables();
    for var in &mut variables {
        var.zero_grad();
    }
    let stats = precision.autocast(Device::Cpu, || model.loss(&inputs, &targets, None, mode)).unwrap();
    stats.loss.backward();
    let grads = variables.iter().map(|v| v.grad().to_kind(Kind::Float)).collect();
    (stats.loss.double_value(&[]), grads)
}

fn check(strict_causal: bool, reversible: bool) {
    let (vs, model) = model(&config(strict_causal, reversible));
    let (reference, _) = loss_and_grads(&vs, &model, Precision::F32);
    for (precision, tolerance) in [(Precision::Bf16, BF16_LOSS_TOLERANCE), (Precision::F16, F16_LOSS_TOLERANCE)] {
        let (loss, grads) = loss_and_grads(&vs, &model, precision);
        assert!(loss.is_finite(), "{precision:?}: loss {loss}");
        for grad in &grads {
            assert!(grad.isfinite().all().int64_value(&[]) == 1, "{precision:?}: a gradient is not finite");
        }
        let gap = (loss - reference).abs();
        assert!(gap <= tolerance, "{precision:?}: loss {loss} against float32 {reference} (gap {gap})");
        assert!(gap > 0.0, "{precision:?}: the loss equals float32's: autocast did not run");
    }
}

#[test]
fn autocast_losses_stay_near_float32_and_finite() {
    check(false, false);
}

#[test]
fn autocast_losses_stay_near_float32_and_finite_under_the_strict_causal_rule() {
    check(true, false);
}

#[test]
fn autocast_losses_stay_near_float32_and_finite_with_reversible_layers() {
    check(false, true);
}
