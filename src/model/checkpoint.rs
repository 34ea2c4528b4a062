//! Activation checkpointing: `checkpoint(inputs, f)` computes `f(inputs)` and keeps only
//! the inputs for backward, where `f` runs again under autograd and is differentiated.
//! Several checkpointed slices of a memory-heavy computation (LSH attention one head and
//! round at a time) then hold one slice's activations at a time, in the forward and in
//! the backward, for the price of computing each slice's forward twice.
//!
//! The node is C++ (`csrc/checkpoint.cpp`, tch has no binding for custom autograd
//! functions) and calls back into the `extern "C"` functions below.

use std::ffi::{c_char, c_int, c_void};
use std::panic::catch_unwind;

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

use super::autograd_bridge::{error_from, grad_enabled, guarded, hand_over_all, ERROR_LEN};

/// The function a node recomputes: same inputs, same outputs, every time (randomness
/// must come from seeds). Inputs are borrowed; it returns as many tensors as declared.
type Function = Box<dyn Fn(&[Tensor]) -> Vec<Tensor>>;

/// (function, inputs, n_inputs, outputs, n_outputs, err, err_len) -> 0 or an error code.
type ForwardFn =
    extern "C" fn(*mut c_void, *const *const C_tensor, usize, *mut *mut C_tensor, usize, *mut c_char, usize) -> c_int;
/// (function, inputs, n_inputs, grad_outputs, n_outputs, grad_inputs, err, err_len) -> 0 or an error code.
type BackwardFn = extern "C" fn(
    *mut c_void,
    *const *const C_tensor,
    usize,
    *const *const C_tensor,
    usize,
    *mut *mut C_tensor,
    *mut c_char,
    usize,
) -> c_int;

/// `CheckpointCallbacks` in csrc/checkpoint.cpp.
#[repr(C)]
struct Callbacks {
    forward: ForwardFn,
    backward: BackwardFn,
    drop: extern "C" fn(*mut c_void),
}

const CALLBACKS: Callbacks = Callbacks { forward: forward_callback, backward: backward_callback, drop: drop_callback };

extern "C" {
    /// Builds the node and runs its forward; owns `function` from then on.
    fn checkpoint_apply(
        function: *mut c_void,
        callbacks: Callbacks,
        inputs: *const *const C_tensor,
        n_inputs: usize,
        outputs: *mut *mut C_tensor,
        n_outputs: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// `f(inputs)`, `n_outputs` tensors, keeping only `inputs` for backward when autograd
/// records (otherwise `f` simply runs). `f` must compute the same outputs from the same
/// inputs on every call, and must not read tensors that require gradients other than
/// its inputs (their gradients would be lost).
pub fn checkpoint(
    inputs: &[Tensor],
    n_outputs: usize,
    f: impl Fn(&[Tensor]) -> Vec<Tensor> + 'static,
) -> Result<Vec<Tensor>, TchError> {
    if !grad_enabled() || !inputs.iter().any(Tensor::requires_grad) {
        return Ok(f(inputs));
    }
    let function: *mut Function = Box::into_raw(Box::new(Box::new(f)));
    let input_ptrs: Vec<*const C_tensor> = inputs.iter().map(Tensor::as_ptr).collect();
    let mut outputs = vec![std::ptr::null_mut(); n_outputs];
    let mut err = [0 as c_char; ERROR_LEN];
    // SAFETY: every pointer is valid for the call; C++ owns `function` from here on and
    // frees it (through `drop_callback`) with the node.
    let rc = unsafe {
        checkpoint_apply(
            function.cast(),
            CALLBACKS,
            input_ptrs.as_ptr(),
            input_ptrs.len(),
            outputs.as_mut_ptr(),
            n_outputs,
            err.as_mut_ptr(),
            ERROR_LEN,
        )
    };
    if rc != 0 {
        return Err(error_from(&err));
    }
    // SAFETY: on success C++ handed over `n_outputs` new tensors.
    Ok(outputs.into_iter().map(|t| unsafe { Tensor::from_ptr(t) }).collect())
}

/// Borrows `n` tensors that C++ passes by pointer.
///
/// # Safety
/// `ptrs` points to `n` valid tensor pointers for the duration of the call.
unsafe fn borrow_all(ptrs: *const *const C_tensor, n: usize) -> Vec<Tensor> {
    (0..n).map(|i| Tensor::clone_from_ptr((*ptrs.add(i)).cast_mut())).collect()
}

extern "C" fn forward_callback(
    function: *mut c_void,
    inputs: *const *const C_tensor,
    n_inputs: usize,
    outputs: *mut *mut C_tensor,
    n_outputs: usize,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    guarded(err, err_len, || {
        // SAFETY: C++ passes the function it owns and `n_inputs` borrowed tensors.
        let function = unsafe { &*(function as *const Function) };
        let inputs = unsafe { borrow_all(inputs, n_inputs) };
        let results = tch::no_grad(|| function(&inputs));
        if results.len() != n_outputs {
            return Err(TchError::Torch(format!("checkpoint: {} outputs, {n_outputs} declared", results.len())));
        }
        unsafe { hand_over_all(outputs, results.into_iter().map(Some)) };
        Ok(())
    })
}

/// Recomputes the function from leaf copies of its inputs and writes each input's
/// gradient (null where none) into `grad_inputs`.
#[allow(clippy::too_many_arguments)]
extern "C" fn backward_callback(
    function: *mut c_void,
    inputs: *const *const C_tensor,
    n_inputs: usize,
    grad_outputs: *const *const C_tensor,
    n_outputs: usize,
    grad_inputs: *mut *mut C_tensor,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    guarded(err, err_len, || {
        // SAFETY: as in `forward_callback`; `grad_inputs` has room for `n_inputs` pointers.
        let function = unsafe { &*(function as *const Function) };
        let inputs = unsafe { borrow_all(inputs, n_inputs) };
        let grad_outputs = unsafe { borrow_all(grad_outputs, n_outputs) };
        let leaves: Vec<Tensor> = inputs.iter().map(|x| x.detach().set_requires_grad(x.requires_grad())).collect();
        let grads = tch::with_grad(|| -> Result<Vec<Option<Tensor>>, TchError> {
            let outputs = function(&leaves);
            // The gradient of Σ sum(out · grad_out) with respect to each `out` is its
            // `grad_out` exactly; outputs that received no gradient drop out.
            let terms: Vec<Tensor> = outputs
                .iter()
                .zip(&grad_outputs)
                .filter(|(out, grad)| grad.defined() && out.requires_grad())
                .map(|(out, grad)| (out * grad).sum(out.kind()))
                .collect();
            let wanted: Vec<&Tensor> = leaves.iter().filter(|x| x.requires_grad()).collect();
            if terms.is_empty() || wanted.is_empty() {
                return Ok(leaves.iter().map(|_| None).collect());
            }
            let surrogate = terms.into_iter().reduce(|a, b| a + b).expect("terms is not empty");
            let mut grads = Tensor::f_run_backward(&[surrogate], &wanted, false, false)?.into_iter();
            Ok(leaves
                .iter()
                .map(|x| if x.requires_grad() { grads.next().filter(Tensor::defined) } else { None })
                .collect())
        })?;
        unsafe { hand_over_all(grad_inputs, grads) };
        Ok(())
    })
}

extern "C" fn drop_callback(function: *mut c_void) {
    // A panic while dropping cannot be reported from a C++ destructor; it stops here.
    let _ = catch_unwind(|| drop(unsafe { Box::from_raw(function as *mut Function) }));
}
