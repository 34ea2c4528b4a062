//! How one LSH attention call computes, decided in one place: through the fused CPU
//! kernel (with this CPU's row-work variant, `cpu_paths`) or the batched path, and
//! whole or one slice at a time. `reformer bench` reports the name.

use tch::{Device, Kind};

use super::lsh_params::LshParams;
use crate::autograd;
use crate::cpu_paths::{self, KernelIsa};
use crate::model::seeded_random::ForwardMode;

/// What computes the windows' attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LshKernel {
    /// `lsh_fused`: no (rounds × positions × window) tensor exists.
    Fused(KernelIsa),
    /// `lsh::attend_rounds`'s tensors, all chunks' windows at once, for the reason given.
    Batched(&'static str),
}

/// Whether the heads and rounds run at once or a slice at a time (`lsh::lsh_attend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slicing {
    Whole,
    /// `sliced_attention`: one slice at a time under activation checkpointing.
    Checkpointed,
    /// Without autograd, batched attention over more than `max_logits_at_once` logits:
    /// one slice at a time, nothing recomputed.
    BoundedLogits,
}

/// The path of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LshPath {
    pub kernel: LshKernel,
    pub slicing: Slicing,
}

impl LshKernel {
    /// The kernel for a call with `p` on inputs of `kind` on `device`. The fused kernel
    /// covers the CPU in float32 and float64, causal or not, any window, padding and the
    /// strict rule; not CUDA (no kernel yet), half precision (autocast's bfloat16/float16
    /// matmuls), the released rule's ring, or attention dropout while training (its
    /// masks are drawn over the batched path's probabilities).
    pub fn choose(p: &LshParams, kind: Kind, device: Device, mode: ForwardMode) -> Self {
        let reason = if !p.fused {
            Some("execution.fused_lsh = false")
        } else if device != Device::Cpu {
            Some("no fused kernel on CUDA yet")
        } else if !matches!(kind, Kind::Float | Kind::Double) {
            Some("half precision")
        } else if !p.rule.fused_kernel_covers() {
            Some("lsh.window = released")
        } else if mode.train && p.dropout > 0.0 {
            Some("attention dropout")
        } else {
            None
        };
        match reason {
            Some(reason) => Self::Batched(reason),
            None => Self::Fused(cpu_paths::lsh_kernel_isa()),
        }
    }
}

impl LshPath {
    /// The path for a call with `p` that would hold `n_logits` logits on the batched path.
    pub fn choose(p: &LshParams, kind: Kind, device: Device, mode: ForwardMode, n_logits: i64) -> Self {
        let kernel = LshKernel::choose(p, kind, device, mode);
        let holds_logits = matches!(kernel, LshKernel::Batched(_));
        let slicing = if p.sliced {
            Slicing::Checkpointed
        } else if holds_logits && !autograd::grad_enabled() && n_logits > p.max_logits_at_once {
            Slicing::BoundedLogits
        } else {
            Slicing::Whole
        };
        Self { kernel, slicing }
    }

    /// "fused (avx512)", "batched (half precision)", with ", sliced" when sliced.
    pub fn name(&self) -> String {
        let kernel = match self.kernel {
            LshKernel::Fused(isa) => format!("fused ({})", isa.name()),
            LshKernel::Batched(reason) => format!("batched ({reason})"),
        };
        match self.slicing {
            Slicing::Whole => kernel,
            Slicing::Checkpointed | Slicing::BoundedLogits => format!("{kernel}, sliced"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention::window_rule::WindowRule;

    #[test]
    fn the_kernel_path_is_named_and_the_batched_one_gives_its_reason() {
        let p = LshParams::default();
        let (cpu, eval) = (Device::Cpu, ForwardMode::eval(0));
        let name = |p: &LshParams, kind, mode| LshPath::choose(p, kind, cpu, mode, 0).name();
        let fused = format!("fused ({})", cpu_paths::lsh_kernel_isa().name());
        assert_eq!(name(&p, Kind::Float, eval), fused);
        assert_eq!(name(&p, Kind::BFloat16, eval), "batched (half precision)");
        let released = LshParams { rule: WindowRule::Released, ..p.clone() };
        assert_eq!(name(&released, Kind::Float, eval), "batched (lsh.window = released)");
        let strict = LshParams { rule: WindowRule::Strict, ..p.clone() };
        assert_eq!(name(&strict, Kind::Float, eval), fused);
        let dropout = LshParams { dropout: 0.1, ..p.clone() };
        assert_eq!(name(&dropout, Kind::Float, eval), fused);
        assert_eq!(name(&dropout, Kind::Float, ForwardMode::train(0)), "batched (attention dropout)");
        let unfused = LshParams { fused: false, ..p.clone() };
        assert_eq!(name(&unfused, Kind::Float, eval), "batched (execution.fused_lsh = false)");
        let sliced = LshParams { sliced: true, ..p.clone() };
        assert_eq!(name(&sliced, Kind::Float, eval), format!("{fused}, sliced"));
    }

    #[test]
    fn without_autograd_only_logits_beyond_the_bound_are_sliced() {
        let p = LshParams { fused: false, max_logits_at_once: 100, ..Default::default() };
        let eval = ForwardMode::eval(0);
        let slicing = |n_logits| tch::no_grad(|| LshPath::choose(&p, Kind::Float, Device::Cpu, eval, n_logits).slicing);
        assert_eq!(slicing(100), Slicing::Whole);
        assert_eq!(slicing(101), Slicing::BoundedLogits);
        // The fused kernel holds no logits: nothing to bound.
        let fused = LshParams { fused: true, ..p.clone() };
        let path = tch::no_grad(|| LshPath::choose(&fused, Kind::Float, Device::Cpu, eval, 101));
        assert_eq!(path.slicing, Slicing::Whole);
        // Under autograd, slicing costs a recomputation: only `sliced` asks for it.
        assert_eq!(LshPath::choose(&p, Kind::Float, Device::Cpu, eval, 101).slicing, Slicing::Whole);
    }
}
