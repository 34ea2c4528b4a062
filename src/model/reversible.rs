//! The memory-saving reversible backward of the block stack (paper §3, after RevNets,
//! Gomez et al. 2017). Each block maps (x1, x2) to y1 = x1 + F(x2), y2 = x2 + G(y1), so
//! its inputs follow from its outputs: x2 = y2 − G(y1), x1 = y1 − F(x2). The forward keeps
//! only the stack's final (y1, y2); the backward walks the blocks in reverse, rebuilds
//! each block's inputs, replays F and G under autograd (their randomness comes from
//! seeds, so the replay is bit for bit) and carries the gradients one block back.
//! Activation memory is one block's, whatever the depth.
//!
//! libtorch's `torch::autograd::Function` has no Rust binding, so the node itself is a
//! small C++ class (`csrc/reversible.cpp`) that calls back into the `extern "C"`
//! functions below. Tensors cross as `at::Tensor*` (tch's `C_tensor`): borrowed with
//! `Tensor::clone_from_ptr`, handed over with `into_raw`.

use std::ffi::{c_char, c_int, c_void};
use std::panic::catch_unwind;

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

use super::autograd_bridge::{catch_panic, error_from, guarded, hand_over_all, into_raw, ERROR_LEN};
use super::block::Block;
use super::seeded_random::ForwardMode;

/// (stack, x1, x2, &y1, &y2, err, err_len) -> 0 or an error code.
type ForwardFn = extern "C" fn(
    *mut c_void,
    *const C_tensor,
    *const C_tensor,
    *mut *mut C_tensor,
    *mut *mut C_tensor,
    *mut c_char,
    usize,
) -> c_int;
/// (stack, y1, y2, dy1, dy2, grads: [dx1, dx2, d param…], err, err_len) -> 0 or an error code.
type BackwardFn = extern "C" fn(
    *mut c_void,
    *const C_tensor,
    *const C_tensor,
    *const C_tensor,
    *const C_tensor,
    *mut *mut C_tensor,
    *mut c_char,
    usize,
) -> c_int;

/// The C++ node's view of a `Stack` (`RevCallbacks` in csrc/reversible.cpp).
#[repr(C)]
struct Callbacks {
    forward: ForwardFn,
    backward: BackwardFn,
    drop: extern "C" fn(*mut c_void),
}

const CALLBACKS: Callbacks = Callbacks { forward: forward_callback, backward: backward_callback, drop: drop_callback };

extern "C" {
    /// Builds the autograd node and runs its forward; owns `stack` from then on.
    fn reversible_apply(
        stack: *mut c_void,
        callbacks: Callbacks,
        x1: *const C_tensor,
        x2: *const C_tensor,
        params: *const *const C_tensor,
        n_params: usize,
        y1: *mut *mut C_tensor,
        y2: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    /// The leaves `root`'s graph reaches; fills at most `cap`, returns the count.
    fn reversible_leaves(root: *const C_tensor, out: *mut *mut C_tensor, cap: usize) -> usize;
}

/// The two residual streams, each (B, T, D).
type Streams = (Tensor, Tensor);

/// What the autograd node holds for its lifetime: the blocks, the forward pass's mode and
/// the parameters whose gradients the node returns. No activation is kept here.
struct Stack {
    /// Borrowed from the caller of `reversible_blocks` (see its safety note).
    blocks: *const [Block],
    mode: ForwardMode,
    params: Vec<Tensor>,
}

impl Stack {
    fn blocks(&self) -> &[Block] {
        // SAFETY: `reversible_blocks` requires the blocks to outlive the node's backward.
        unsafe { &*self.blocks }
    }

    /// The blocks without autograd: nothing but the result is kept.
    ///
    /// # Shapes
    /// `x1`, `x2`: (B, T, D); returns (y1, y2), each (B, T, D).
    fn forward(&self, x1: &Tensor, x2: &Tensor) -> Streams {
        tch::no_grad(|| {
            let mut streams = (x1.shallow_clone(), x2.shallow_clone());
            for (i, block) in self.blocks().iter().enumerate() {
                streams = block.forward(&streams.0, &streams.1, self.mode.child(i as u64));
            }
            streams
        })
    }

    /// Gradients of the stack's inputs and parameters from those of its outputs.
    ///
    /// # Shapes
    /// `y1`, `y2`, `dy1`, `dy2`: (B, T, D); returns ((dx1, dx2), one gradient per param).
    fn backward(&self, y: Streams, dy: Streams) -> Result<(Streams, Vec<Option<Tensor>>), TchError> {
        let mut param_grads: Vec<Option<Tensor>> = self.params.iter().map(|_| None).collect();
        let (mut y1, mut y2) = (y.0.detach(), y.1.detach());
        let (mut dy1, mut dy2) = dy;
        for (i, block) in self.blocks().iter().enumerate().rev() {
            let mode = self.mode.child(i as u64);
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
                dy1_rows.push(self.vector_jacobian(&g, &dy2.narrow(1, start, len), &y1_leaf, &mut param_grads)?);
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
            dy2 = self.vector_jacobian(&f, &dy1, &x2_leaf, &mut param_grads)? + &dy2;
            (y1, y2) = (x1, x2_leaf.detach());
        }
        Ok(((dy1, dy2), param_grads))
    }

    /// `grad_out`ᵀ · ∂`out`/∂`input`, returned; the same for every parameter, added into
    /// `param_grads`. Frees `out`'s graph.
    fn vector_jacobian(
        &self,
        out: &Tensor,
        grad_out: &Tensor,
        input: &Tensor,
        param_grads: &mut [Option<Tensor>],
    ) -> Result<Tensor, TchError> {
        // The gradient of sum(out · grad_out) with respect to `out` is `grad_out` exactly.
        let surrogate = tch::with_grad(|| (out * grad_out).sum(out.kind()));
        let inputs: Vec<&Tensor> = std::iter::once(input).chain(&self.params).collect();
        let mut grads = Tensor::f_run_backward(&[surrogate], &inputs, false, false)?.into_iter();
        let d_input = grads.next().filter(Tensor::defined).unwrap_or_else(|| input.zeros_like());
        for (sum, grad) in param_grads.iter_mut().zip(grads) {
            if grad.defined() {
                *sum = Some(match sum.take() {
                    Some(sum) => sum + grad,
                    None => grad,
                });
            }
        }
        Ok(d_input)
    }
}

/// The stack `blocks` run as y = blocks(x) under one autograd node that keeps only the
/// output and rebuilds every block's inputs in backward (see the module doc). The
/// outputs are those of the ordinary loop (the same operations, without autograd); the
/// gradients equal ordinary autograd's up to the rounding of the reconstruction. Block
/// `i` runs with `mode.child(i)`.
///
/// The returned tensors' graph refers to `blocks` by pointer: until backward has run (or
/// the graph is dropped) the blocks must be neither dropped nor changed (e.g. by
/// `ReformerLm::set_n_hashes`), since backward replays them. Double backward is not
/// supported.
///
/// # Shapes
/// `x1`, `x2`: (B, T, D); returns (y1, y2), each (B, T, D).
pub fn reversible_blocks(
    blocks: &[Block],
    x1: &Tensor,
    x2: &Tensor,
    mode: ForwardMode,
) -> Result<(Tensor, Tensor), TchError> {
    let params = stack_parameters(blocks, x2, mode)?;
    let param_ptrs: Vec<*const C_tensor> = params.iter().map(Tensor::as_ptr).collect();
    let stack = Box::into_raw(Box::new(Stack { blocks: blocks as *const [Block], mode, params }));
    let (mut y1, mut y2) = (std::ptr::null_mut(), std::ptr::null_mut());
    let mut err = [0 as c_char; ERROR_LEN];
    // SAFETY: every pointer is valid for the call; C++ owns `stack` from here on and
    // frees it (through `drop_callback`) with the node.
    let rc = unsafe {
        reversible_apply(
            stack.cast(),
            CALLBACKS,
            x1.as_ptr(),
            x2.as_ptr(),
            param_ptrs.as_ptr(),
            param_ptrs.len(),
            &mut y1,
            &mut y2,
            err.as_mut_ptr(),
            ERROR_LEN,
        )
    };
    if rc != 0 {
        return Err(error_from(&err));
    }
    // SAFETY: on success C++ handed over two new tensors.
    Ok(unsafe { (Tensor::from_ptr(y1), Tensor::from_ptr(y2)) })
}

/// The parameters that F and G of `blocks` read, which the node needs as inputs. A
/// `Block` does not list them, but libtorch knows them: every block runs once on a
/// one-token input under autograd, and the leaves its graph reaches are collected.
///
/// # Shapes
/// `like`: (B, T, D), only its width, dtype and device are used.
pub fn stack_parameters(blocks: &[Block], like: &Tensor, mode: ForwardMode) -> Result<Vec<Tensor>, TchError> {
    let d = like.size()[2];
    let probe = Tensor::zeros([1, 1, d], (like.kind(), like.device())); // (1, 1, D)
    let root = catch_panic(|| {
        tch::with_grad(|| {
            let outputs: Vec<Tensor> = blocks
                .iter()
                .enumerate()
                .map(|(i, block)| {
                    let mode = mode.child(i as u64);
                    block.f(&probe, mode) + block.g(&probe, mode)
                })
                .collect();
            Tensor::f_stack(&outputs, 0) // (n_blocks, 1, 1, D)
        })
    })?;
    // SAFETY: the first call only counts; the second fills `n` slots with new tensors.
    let n = unsafe { reversible_leaves(root.as_ptr(), std::ptr::null_mut(), 0) };
    let mut leaves = vec![std::ptr::null_mut(); n];
    let filled = unsafe { reversible_leaves(root.as_ptr(), leaves.as_mut_ptr(), n) };
    if filled != n {
        return Err(TchError::Torch(format!("reversible: parameter walk found {filled} leaves, then {n}")));
    }
    Ok(leaves.into_iter().map(|leaf| unsafe { Tensor::from_ptr(leaf) }).collect())
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

extern "C" fn forward_callback(
    stack: *mut c_void,
    x1: *const C_tensor,
    x2: *const C_tensor,
    y1: *mut *mut C_tensor,
    y2: *mut *mut C_tensor,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    guarded(err, err_len, || {
        // SAFETY: C++ passes the `Stack` it owns and borrowed tensors, valid for the call.
        let stack = unsafe { &*(stack as *const Stack) };
        let (x1, x2) = unsafe { (Tensor::clone_from_ptr(x1.cast_mut()), Tensor::clone_from_ptr(x2.cast_mut())) };
        let (out1, out2) = stack.forward(&x1, &x2);
        unsafe {
            *y1 = into_raw(out1);
            *y2 = into_raw(out2);
        }
        Ok(())
    })
}

/// Writes dx1, dx2 and then one gradient per parameter (null where none) into `grads`.
#[allow(clippy::too_many_arguments)]
extern "C" fn backward_callback(
    stack: *mut c_void,
    y1: *const C_tensor,
    y2: *const C_tensor,
    dy1: *const C_tensor,
    dy2: *const C_tensor,
    grads: *mut *mut C_tensor,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    guarded(err, err_len, || {
        // SAFETY: as in `forward_callback`; `grads` has room for 2 + params.len() pointers.
        let stack = unsafe { &*(stack as *const Stack) };
        let borrow = |t: *const C_tensor| unsafe { Tensor::clone_from_ptr(t.cast_mut()) };
        let ((dx1, dx2), param_grads) = stack.backward((borrow(y1), borrow(y2)), (borrow(dy1), borrow(dy2)))?;
        let outputs = [Some(dx1), Some(dx2)].into_iter().chain(param_grads);
        unsafe { hand_over_all(grads, outputs) };
        Ok(())
    })
}

extern "C" fn drop_callback(stack: *mut c_void) {
    // A panic while dropping tensors cannot be reported from a C++ destructor; it is
    // contained here rather than unwinding into C++.
    let _ = catch_unwind(|| drop(unsafe { Box::from_raw(stack as *mut Stack) }));
}
