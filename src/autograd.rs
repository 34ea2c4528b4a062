//! Custom autograd functions written in Rust: a `Function` computes its outputs without
//! autograd and, in the backward pass, the gradients of its inputs from those of its
//! outputs, recomputing what it needs from the tensors it kept (its inputs or its
//! outputs). This is how the memory-saving parts of the model keep fewer activations
//! than autograd would: the reversible block stack keeps its outputs
//! (`model::reversible`), activation checkpointing keeps its inputs
//! (`model::activation_checkpoint`).
//!
//! libtorch's `torch::autograd::Function` has no Rust binding, so the node is one small
//! C++ class (`csrc/custom_function.cpp`) that calls back into the `extern "C"`
//! functions below with the function object as an opaque pointer.

use std::ffi::{c_char, c_int, c_void};
use std::panic::catch_unwind;

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

use crate::ffi::{self, borrow_all, guarded, hand_over_all};

/// What the node keeps for the backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The inputs (the function recomputes its outputs from them).
    Inputs,
    /// The outputs (the function rebuilds its inputs from them).
    Outputs,
}

/// A differentiable function of tensors with a hand-written backward.
pub trait Function {
    /// Named in error messages ("<name> forward: ...").
    fn name(&self) -> &'static str;

    /// The outputs, computed without autograd (the node records none of it).
    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError>;

    /// One gradient per input (None where there is none) from `kept` (the inputs or the
    /// outputs, as declared by `apply`'s `keep`) and the outputs' gradients (an output
    /// that received no gradient has an undefined one).
    fn backward(&self, kept: &[Tensor], grad_outputs: &[Tensor]) -> Result<Vec<Option<Tensor>>, TchError>;
}

/// Whether libtorch records operations for autograd on this thread.
pub fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { reformer_grad_enabled() != 0 }
}

/// `apply` for the model, whose tensor functions follow tch's operators: they return
/// tensors, and a libtorch error panics with libtorch's message (the command line reports
/// it in one line). The model checks what a user can get wrong before it computes.
pub fn run(function: impl Function + 'static, inputs: &[&Tensor], n_outputs: usize, keep: Keep) -> Vec<Tensor> {
    apply(function, inputs, n_outputs, keep).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `function` on `inputs` as one autograd node with `n_outputs` outputs, keeping
/// only `keep` for the backward pass. Every input is an edge of the node: a parameter
/// that the function reads must be among `inputs` for its gradient to reach `.grad`.
///
/// The node owns `function` until the graph is freed; its backward may run on libtorch's
/// autograd thread (CUDA), so the function must not depend on the calling thread.
/// Double backward is not supported.
pub fn apply(
    function: impl Function + 'static,
    inputs: &[&Tensor],
    n_outputs: usize,
    keep: Keep,
) -> Result<Vec<Tensor>, TchError> {
    let n_inputs = inputs.len();
    let handle = Box::into_raw(Box::new(Handle { function: Box::new(function) }));
    let input_ptrs: Vec<*const C_tensor> = inputs.iter().map(|t| t.as_ptr()).collect();
    let mut outputs = vec![std::ptr::null_mut(); n_outputs];
    let mut err = ffi::ErrorBuffer::new();
    // SAFETY: every pointer is valid for the call; C++ owns `handle` from here on, on
    // every path, and frees it (through `drop_callback`) with the node.
    let rc = unsafe {
        custom_function_apply(
            handle.cast(),
            CALLBACKS,
            input_ptrs.as_ptr(),
            n_inputs,
            outputs.as_mut_ptr(),
            n_outputs,
            c_int::from(keep == Keep::Outputs),
            err.as_mut_ptr(),
            ffi::ERROR_LEN,
        )
    };
    if rc != 0 {
        return Err(TchError::Torch(err.message()));
    }
    // SAFETY: on success C++ handed over `n_outputs` new tensors.
    Ok(outputs.into_iter().map(|t| unsafe { Tensor::from_ptr(t) }).collect())
}

/// What the node owns (C++ keeps the arity and passes it to every callback).
struct Handle {
    function: Box<dyn Function>,
}

/// (function, inputs, n_inputs, outputs, n_outputs, err, err_len) -> 0 or an error code.
type ForwardFn =
    extern "C" fn(*mut c_void, *const *const C_tensor, usize, *mut *mut C_tensor, usize, *mut c_char, usize) -> c_int;
/// (function, kept, n_kept, grad_outputs, n_outputs, grad_inputs, n_inputs, err, err_len)
/// -> 0 or an error code.
type BackwardFn = extern "C" fn(
    *mut c_void,
    *const *const C_tensor,
    usize,
    *const *const C_tensor,
    usize,
    *mut *mut C_tensor,
    usize,
    *mut c_char,
    usize,
) -> c_int;

/// `FunctionCallbacks` in csrc/custom_function.cpp.
#[repr(C)]
struct Callbacks {
    forward: ForwardFn,
    backward: BackwardFn,
    drop: extern "C" fn(*mut c_void),
}

const CALLBACKS: Callbacks = Callbacks { forward: forward_callback, backward: backward_callback, drop: drop_callback };

extern "C" {
    /// Builds the node and runs its forward; owns `function` from then on.
    fn custom_function_apply(
        function: *mut c_void,
        callbacks: Callbacks,
        inputs: *const *const C_tensor,
        n_inputs: usize,
        outputs: *mut *mut C_tensor,
        n_outputs: usize,
        keep_outputs: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    /// From `csrc/libtorch_calls.cpp`.
    fn reformer_grad_enabled() -> c_int;
}

/// Prefixes an error with the function's name and the pass it happened in.
fn in_pass(handle: &Handle, pass: &str, error: TchError) -> TchError {
    let message = match error {
        TchError::Torch(message) => message,
        other => other.to_string(),
    };
    TchError::Torch(format!("{} {pass}: {message}", handle.function.name()))
}

extern "C" fn forward_callback(
    handle: *mut c_void,
    inputs: *const *const C_tensor,
    n_inputs: usize,
    outputs: *mut *mut C_tensor,
    n_outputs: usize,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    // SAFETY: C++ passes the handle it owns, alive for the node's lifetime.
    let handle = unsafe { &*(handle as *const Handle) };
    guarded(err, err_len, || {
        // SAFETY: C++ passes `n_inputs` tensors valid for the call.
        let inputs = unsafe { borrow_all(inputs, n_inputs) };
        let results = ffi::catch_panic(|| tch::no_grad(|| handle.function.forward(&inputs)))
            .map_err(|e| in_pass(handle, "forward", e))?;
        if results.len() != n_outputs {
            let message = format!("{} outputs, {n_outputs} declared", results.len());
            return Err(in_pass(handle, "forward", TchError::Torch(message)));
        }
        // SAFETY: `outputs` has room for `n_outputs` tensors.
        unsafe { hand_over_all(outputs, results.into_iter().map(Some)) };
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
extern "C" fn backward_callback(
    handle: *mut c_void,
    kept: *const *const C_tensor,
    n_kept: usize,
    grad_outputs: *const *const C_tensor,
    n_outputs: usize,
    grad_inputs: *mut *mut C_tensor,
    n_inputs: usize,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    // SAFETY: as in `forward_callback`.
    let handle = unsafe { &*(handle as *const Handle) };
    guarded(err, err_len, || {
        // SAFETY: C++ passes `n_kept` and `n_outputs` tensors valid for the call.
        let (kept, grad_outputs) = unsafe { (borrow_all(kept, n_kept), borrow_all(grad_outputs, n_outputs)) };
        let grads = ffi::catch_panic(|| handle.function.backward(&kept, &grad_outputs))
            .map_err(|e| in_pass(handle, "backward", e))?;
        if grads.len() != n_inputs {
            let message = format!("{} gradients for {n_inputs} inputs", grads.len());
            return Err(in_pass(handle, "backward", TchError::Torch(message)));
        }
        // SAFETY: `grad_inputs` has room for `n_inputs` tensors.
        unsafe { hand_over_all(grad_inputs, grads) };
        Ok(())
    })
}

extern "C" fn drop_callback(handle: *mut c_void) {
    // A panic while dropping cannot be reported from a C++ destructor; it stops here.
    // SAFETY: C++ calls this once, with the pointer `apply` handed over.
    let _ = catch_unwind(|| drop(unsafe { Box::from_raw(handle as *mut Handle) }));
}
