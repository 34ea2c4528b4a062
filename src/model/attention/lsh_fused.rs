//! The fused LSH attention kernel (`csrc/lsh_window_attention.cpp`) as an autograd
//! function: per (sequence, round, chunk) block it reads the sorted queries and their
//! window of keys and values through the sort order, masks the logits from positions on
//! the fly and writes each output row to its (round, position), so that neither the
//! (rounds × positions × window) masks and probabilities nor the sorted copies exist; the
//! backward recomputes each block from the inputs. It computes what the
//! batched path of `lsh::attend_rounds` computes, which stays as its reference and as the
//! path for the cases it does not cover (`lsh_path`).

use std::ffi::{c_char, c_int};

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

use super::lsh_params::LshParams;
use super::window_rule::{MASKED_LOGIT, SELF_LOGIT};
use crate::autograd::{self, Function, Keep};
use crate::cpu_paths::{self, KernelIsa};
use crate::ffi::checked;

/// `LshWindowRules` in csrc/lsh_window_attention.cpp: which keys a query may see.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WindowRules {
    pub chunk_len: i64,
    pub n_chunks_before: i64,
    pub n_chunks_after: i64,
    /// Positions from here on are padding.
    pub real_len: i64,
    pub causal: i32,
    /// The strict window rule (the kernel covers the paper's and the strict one).
    pub strict_causal: i32,
    pub self_logit: f64,
    pub masked_logit: f64,
}

impl WindowRules {
    /// The rules of `p` for a sequence whose first `t` positions are real.
    pub fn new(p: &LshParams, t: i64) -> Self {
        Self {
            chunk_len: p.chunk_len,
            n_chunks_before: p.n_chunks_before,
            n_chunks_after: p.n_chunks_after,
            real_len: t,
            causal: p.causal.into(),
            strict_causal: p.rule.reads_buckets().into(),
            self_logit: SELF_LOGIT,
            masked_logit: MASKED_LOGIT,
        }
    }
}

/// Chunked LSH attention of each round through the fused kernel, before the rounds are
/// combined, with the row-work variant of this process (`cpu_paths::lsh_kernel_isa`). `sticker` lists, for each slot of the sorted rounds, round·Tp + position.
///
/// # Shapes
/// `q`, `k`, `v`: (B, h, Tp, Dh) (queries scaled as the logits need, keys of unit
/// length); `sticker`: (B, h, r·Tp) int64; `buckets`: (B, h, r, Tp) int64; returns the
/// outputs (B, h, r, Tp, Dh) and their log-sum-exps (B, h, r, Tp, 1).
pub fn attend_rounds(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    sticker: &Tensor,
    buckets: &Tensor,
    rules: WindowRules,
) -> (Tensor, Tensor) {
    attend_rounds_with(cpu_paths::lsh_kernel_isa(), q, k, v, sticker, buckets, rules)
}

/// `attend_rounds` with the row-work variant `isa`, which this CPU must run.
pub fn attend_rounds_with(
    isa: KernelIsa,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    sticker: &Tensor,
    buckets: &Tensor,
    rules: WindowRules,
) -> (Tensor, Tensor) {
    assert!(isa.runs_here(), "this CPU does not run the {} LSH row kernels", isa.name());
    let (b, h, t_pad, dh) = q.size4().unwrap();
    let r = sticker.size()[2] / t_pad;
    let function = WindowAttention {
        sticker: sticker.view([b * h, r * t_pad]),
        buckets: (rules.strict_causal != 0).then(|| buckets.view([b * h, r, t_pad])),
        rules,
        isa,
    };
    let flat = |x: &Tensor| x.reshape([b * h, t_pad, dh]); // (B·h, Tp, Dh)
    let inputs = [flat(q), flat(k), flat(v)];
    let outputs = autograd::run(function, &[&inputs[0], &inputs[1], &inputs[2]], 2, Keep::Inputs);
    let out = outputs[0].view([b, h, r, t_pad, dh]); // (B, h, r, Tp, Dh)
    let lse = outputs[1].view([b, h, r, t_pad, 1]); // (B, h, r, Tp, 1)
    (out, lse)
}

/// The autograd node of one kernel call: it keeps its inputs for the backward.
struct WindowAttention {
    /// (N, R·Tp) int64
    sticker: Tensor,
    /// (N, R, Tp) int64, under the strict causal rule
    buckets: Option<Tensor>,
    rules: WindowRules,
    isa: KernelIsa,
}

impl Function for WindowAttention {
    fn name(&self) -> &'static str {
        "fused LSH attention"
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let (mut out, mut lse) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: every pointer is valid for the call.
        kernel_call(|err, len| unsafe {
            reformer_lsh_window_forward(
                inputs[0].as_ptr(),
                inputs[1].as_ptr(),
                inputs[2].as_ptr(),
                self.sticker.as_ptr(),
                self.buckets_ptr(),
                &self.rules,
                self.isa.code(),
                &mut out,
                &mut lse,
                err,
                len,
            )
        })?;
        // SAFETY: handed over by the successful call.
        Ok(unsafe { vec![Tensor::from_ptr(out), Tensor::from_ptr(lse)] })
    }

    fn backward(&self, kept: &[Tensor], grad_outputs: &[Tensor]) -> Result<Vec<Option<Tensor>>, TchError> {
        let grad = |g: &Tensor| if g.defined() { g.as_ptr() } else { std::ptr::null() };
        let (mut dq, mut dk, mut dv) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: every pointer is valid for the call.
        kernel_call(|err, len| unsafe {
            reformer_lsh_window_backward(
                kept[0].as_ptr(),
                kept[1].as_ptr(),
                kept[2].as_ptr(),
                self.sticker.as_ptr(),
                self.buckets_ptr(),
                &self.rules,
                self.isa.code(),
                grad(&grad_outputs[0]),
                grad(&grad_outputs[1]),
                &mut dq,
                &mut dk,
                &mut dv,
                err,
                len,
            )
        })?;
        // SAFETY: handed over by the successful call.
        Ok(unsafe { vec![Some(Tensor::from_ptr(dq)), Some(Tensor::from_ptr(dk)), Some(Tensor::from_ptr(dv))] })
    }
}

impl WindowAttention {
    /// The buckets for C++, null when the rule does not read them.
    fn buckets_ptr(&self) -> *const C_tensor {
        self.buckets.as_ref().map_or(std::ptr::null(), |b| b.as_ptr())
    }
}

/// How many distinct threads ran blocks in the last kernel call (forward or backward) of
/// this process: the kernel's parallelism made visible, for tests.
pub fn threads_in_last_call() -> usize {
    // SAFETY: reads an atomic counter.
    unsafe { reformer_lsh_threads_in_last_call() as usize }
}

/// A kernel entry point through `ffi::checked`, its error as autograd's.
fn kernel_call(call: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), TchError> {
    checked(call).map_err(|e| TchError::Torch(e.to_string()))
}

extern "C" {
    fn reformer_lsh_threads_in_last_call() -> c_int;

    fn reformer_lsh_window_forward(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        sticker: *const C_tensor,
        buckets: *const C_tensor,
        rules: *const WindowRules,
        isa: i32,
        out: *mut *mut C_tensor,
        lse: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;

    fn reformer_lsh_window_backward(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        sticker: *const C_tensor,
        buckets: *const C_tensor,
        rules: *const WindowRules,
        isa: i32,
        d_out: *const C_tensor,
        d_lse: *const C_tensor,
        dq: *mut *mut C_tensor,
        dk: *mut *mut C_tensor,
        dv: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}
