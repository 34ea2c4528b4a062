//! Activation checkpointing: `checkpoint(inputs, f)` computes `f(inputs)` and keeps only
//! the inputs for backward, where `f` runs again under autograd and is differentiated.
//! Several checkpointed slices of a memory-heavy computation (LSH attention one head and
//! round at a time) then hold one slice's activations at a time, in the forward and in
//! the backward, for the price of computing each slice's forward twice. One client of
//! the custom autograd function (`crate::autograd`).

use tch::{TchError, Tensor};

use super::attention::bucket_tape::BucketTape;
use crate::autograd::{self, grad_enabled, Keep};

/// `f(inputs)`, `n_outputs` tensors, keeping only `inputs` for backward when autograd
/// records (otherwise `f` simply runs). `f` must compute the same outputs from the same
/// inputs on every call, and must not read tensors that require gradients other than
/// its inputs (their gradients would be lost).
pub fn checkpoint(inputs: &[Tensor], n_outputs: usize, f: impl Fn(&[Tensor]) -> Vec<Tensor> + 'static) -> Vec<Tensor> {
    if !grad_enabled() || !inputs.iter().any(Tensor::requires_grad) {
        return f(inputs);
    }
    let inputs: Vec<&Tensor> = inputs.iter().collect();
    let recomputed = Recomputed { f, tape: BucketTape::active_or_new() };
    autograd::run(recomputed, &inputs, n_outputs, Keep::Inputs)
}

/// A function whose backward recomputes it under autograd from its kept inputs. Both
/// runs share one bucket tape, so that the recomputation attends with the buckets the
/// forward hashed (and, inside the reversible stack, with the stack's).
struct Recomputed<F> {
    f: F,
    tape: BucketTape,
}

impl<F: Fn(&[Tensor]) -> Vec<Tensor>> autograd::Function for Recomputed<F> {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        Ok(self.tape.run(|| (self.f)(inputs)))
    }

    fn backward(&self, inputs: &[Tensor], grad_outputs: &[Tensor]) -> Result<Vec<Option<Tensor>>, TchError> {
        let leaves: Vec<Tensor> = inputs.iter().map(|x| x.detach().set_requires_grad(x.requires_grad())).collect();
        tch::with_grad(|| {
            let outputs = self.tape.run(|| (self.f)(&leaves));
            // The gradient of Σ sum(out · grad_out) with respect to each `out` is its
            // `grad_out` exactly; outputs that received no gradient drop out.
            let terms: Vec<Tensor> = outputs
                .iter()
                .zip(grad_outputs)
                .filter(|(out, grad)| grad.defined() && out.requires_grad())
                .map(|(out, grad)| (out * grad).sum(out.kind()))
                .collect();
            let wanted: Vec<&Tensor> = leaves.iter().filter(|x| x.requires_grad()).collect();
            let Some(surrogate) = terms.into_iter().reduce(|a, b| a + b).filter(|_| !wanted.is_empty()) else {
                return Ok(leaves.iter().map(|_| None).collect());
            };
            let mut grads = Tensor::f_run_backward(&[surrogate], &wanted, false, false)?.into_iter();
            Ok(leaves
                .iter()
                .map(|x| if x.requires_grad() { grads.next().filter(Tensor::defined) } else { None })
                .collect())
        })
    }
}
