//! The memory-saving reversible backward of the block stack (paper §3, after RevNets,
//! Gomez et al. 2017). Each block maps (x1, x2) to y1 = x1 + F(x2), y2 = x2 + G(y1), so
//! its inputs follow from its outputs: x2 = y2 − G(y1), x1 = y1 − F(x2). The forward keeps
//! only the stack's final (y1, y2); the backward walks the blocks in reverse, rebuilds
//! each block's inputs, replays F and G under autograd (their randomness comes from
//! seeds, so the replay is bit for bit) and carries the gradients one block back.
//! Activation memory is one block's, whatever the depth. One client of the custom
//! autograd function (`crate::autograd`), which keeps the stack's outputs.

use std::sync::Arc;

use tch::{TchError, Tensor};

use super::attention::bucket_tape::BucketTape;
use super::block::Block;
use super::seeded_random::ForwardMode;
use crate::autograd::{self, Keep};

/// The two residual streams, each (B, T, D).
type Streams = (Tensor, Tensor);

/// The stack `blocks` run as y = blocks(x) under one autograd node that keeps only the
/// output and rebuilds every block's inputs in backward (see the module doc). The
/// outputs are those of the ordinary loop (the same operations, without autograd); the
/// gradients equal ordinary autograd's up to the rounding of the reconstruction. Block
/// `i` runs with `mode.child(i)`.
///
/// The node holds its own reference to `blocks` until the graph is freed: while it does,
/// `Arc::get_mut` on the caller's reference fails, so the blocks cannot change between
/// the forward and the backward that replays them. Double backward is not supported.
///
/// # Shapes
/// `x1`, `x2`: (B, T, D); returns (y1, y2), each (B, T, D).
pub fn reversible_blocks(blocks: &Arc<[Block]>, x1: &Tensor, x2: &Tensor, mode: ForwardMode) -> (Tensor, Tensor) {
    // The parameters are inputs of the node so that it returns their gradients.
    let inputs: Vec<&Tensor> = [x1, x2].into_iter().chain(blocks.iter().flat_map(Block::parameters)).collect();
    let stack = ReversibleStack { blocks: Arc::clone(blocks), mode, tape: BucketTape::default() };
    let [y1, y2] = <[Tensor; 2]>::try_from(autograd::run(stack, &inputs, 2, Keep::Outputs)).expect("two outputs");
    (y1, y2)
}

/// What the autograd node holds for its lifetime: the blocks, the forward pass's mode and
/// the LSH buckets it hashed (replayed in the backward instead of hashing the rebuilt
/// inputs). No activation is kept here.
struct ReversibleStack {
    blocks: Arc<[Block]>,
    mode: ForwardMode,
    tape: BucketTape,
}

impl autograd::Function for ReversibleStack {
    fn name(&self) -> &'static str {
        "reversible"
    }

    /// The blocks without autograd: nothing but the result is kept.
    ///
    /// # Shapes
    /// `inputs`: [x1, x2, parameters…], x1 and x2 (B, T, D); returns [y1, y2], each (B, T, D).
    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let mut streams = (inputs[0].shallow_clone(), inputs[1].shallow_clone());
        self.tape.run(|| {
            for (i, block) in self.blocks.iter().enumerate() {
                streams = block.forward(&streams.0, &streams.1, self.mode.child(i as u64));
            }
        });
        Ok(vec![streams.0, streams.1])
    }

    /// # Shapes
    /// `outputs`: [y1, y2]; `grad_outputs`: [dy1, dy2], each (B, T, D); returns
    /// [dx1, dx2, one gradient per parameter…].
    fn backward(&self, outputs: &[Tensor], grad_outputs: &[Tensor]) -> Result<Vec<Option<Tensor>>, TchError> {
        let y = (outputs[0].shallow_clone(), outputs[1].shallow_clone());
        let dy = (grad_outputs[0].shallow_clone(), grad_outputs[1].shallow_clone());
        let ((dx1, dx2), param_grads) = self.tape.run(|| self.backward_streams(y, dy))?;
        Ok([Some(dx1), Some(dx2)].into_iter().chain(param_grads).collect())
    }
}

impl ReversibleStack {
    /// Gradients of the stack's inputs and of every block's parameters (in the order of
    /// the node's inputs) from those of its outputs.
    ///
    /// # Shapes
    /// `y1`, `y2`, `dy1`, `dy2`: (B, T, D); returns ((dx1, dx2), one gradient per param).
    fn backward_streams(&self, y: Streams, dy: Streams) -> Result<(Streams, Vec<Option<Tensor>>), TchError> {
        let mut grads_by_block: Vec<Vec<Option<Tensor>>> =
            self.blocks.iter().map(|b| b.parameters().iter().map(|_| None).collect()).collect();
        let (mut y1, mut y2) = (y.0.detach(), y.1.detach());
        let (mut dy1, mut dy2) = dy;
        for (i, block) in self.blocks.iter().enumerate().rev() {
            let mode = self.mode.child(i as u64);
            let params = block.parameters();
            let param_grads = &mut grads_by_block[i];
            // y2 = x2 + G(y1): rebuild x2; dL/dy1 gains G's share. G is position-wise, so
            // with a chunked feed-forward it is replayed one chunk at a time and only one
            // chunk's (C, d_ff) activations exist at once.
            let t = y1.size()[1];
            let chunk_len = block.g_chunk_len(t).unwrap_or(t);
            let (mut x2_rows, mut dy1_rows) = (Vec::new(), Vec::new());
            for start in (0..t).step_by(chunk_len as usize) {
                let len = chunk_len.min(t - start);
                let y1_leaf = y1.narrow(1, start, len).detach().set_requires_grad(true); // (B, L, D)
                let g = tch::with_grad(|| block.g_rows(&y1_leaf, mode, start, t)); // (B, L, D)
                x2_rows.push(tch::no_grad(|| y2.narrow(1, start, len) - &g));
                let dy2_rows = dy2.narrow(1, start, len);
                dy1_rows.push(vector_jacobian(&g, &dy2_rows, &y1_leaf, params, param_grads)?);
            }
            let x2 = Tensor::cat(&x2_rows, 1); // (B, T, D)
            drop(x2_rows);
            // Out of place: at the first block dy1 and dy2 are autograd's own buffers.
            dy1 = Tensor::cat(&dy1_rows, 1) + &dy1;
            drop(dy1_rows);
            // y1 = x1 + F(x2): rebuild x1; dL/dx2 gains F's share.
            let x2_leaf = x2.set_requires_grad(true);
            let f = tch::with_grad(|| block.f(&x2_leaf, mode));
            let x1 = tch::no_grad(|| &y1 - &f);
            dy2 = vector_jacobian(&f, &dy1, &x2_leaf, params, param_grads)? + &dy2;
            (y1, y2) = (x1, x2_leaf.detach());
        }
        Ok(((dy1, dy2), grads_by_block.into_iter().flatten().collect()))
    }
}

/// `grad_out`ᵀ · ∂`out`/∂`input`, returned; the same for each of `params` that requires
/// a gradient, added into its slot of `param_grads`. Frees `out`'s graph.
fn vector_jacobian(
    out: &Tensor,
    grad_out: &Tensor,
    input: &Tensor,
    params: &[Tensor],
    param_grads: &mut [Option<Tensor>],
) -> Result<Tensor, TchError> {
    // The gradient of sum(out · grad_out) with respect to `out` is `grad_out` exactly.
    let surrogate = tch::with_grad(|| (out * grad_out).sum(out.kind()));
    let trained: Vec<usize> = (0..params.len()).filter(|&j| params[j].requires_grad()).collect();
    let wrt: Vec<&Tensor> = std::iter::once(input).chain(trained.iter().map(|&j| &params[j])).collect();
    let mut grads = Tensor::f_run_backward(&[surrogate], &wrt, false, false)?.into_iter();
    let d_input = grads.next().filter(Tensor::defined).unwrap_or_else(|| input.zeros_like());
    for (j, grad) in trained.into_iter().zip(grads) {
        if grad.defined() {
            param_grads[j] = Some(match param_grads[j].take() {
                Some(sum) => sum + grad,
                None => grad,
            });
        }
    }
    Ok(d_input)
}

/// Every block's inputs rebuilt from the stack's output, as the backward rebuilds them
/// (the same subtractions, in the same order), for checking the reconstruction.
///
/// # Shapes
/// `y1`, `y2`: (B, T, D); returns, for block i, its (x1, x2), each (B, T, D).
pub fn reconstruct_inputs(blocks: &[Block], y1: &Tensor, y2: &Tensor, mode: ForwardMode) -> Vec<(Tensor, Tensor)> {
    tch::no_grad(|| {
        let mut inputs = Vec::with_capacity(blocks.len());
        let (mut y1, mut y2) = (y1.detach(), y2.detach());
        for (i, block) in blocks.iter().enumerate().rev() {
            let mode = mode.child(i as u64);
            let x2 = &y2 - block.g(&y1, mode);
            let x1 = &y1 - block.f(&x2, mode);
            inputs.push((x1.shallow_clone(), x2.shallow_clone()));
            (y1, y2) = (x1, x2);
        }
        inputs.reverse();
        inputs
    })
}
