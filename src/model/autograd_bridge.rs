//! What the two custom autograd nodes written in C++ (`csrc/reversible.cpp`,
//! `csrc/checkpoint.cpp`) share on the Rust side: handing tensors over, and keeping
//! panics and errors from crossing into C++ (they come back as a non-zero return with a
//! message instead).

use std::any::Any;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

/// Room for an error message coming back from C++.
pub const ERROR_LEN: usize = 4096;

extern "C" {
    fn reversible_grad_enabled() -> c_int;
}

/// Whether libtorch records operations for autograd on this thread.
pub fn grad_enabled() -> bool {
    unsafe { reversible_grad_enabled() != 0 }
}

/// Hands a tensor over to C++, which then owns it.
pub fn into_raw(mut tensor: Tensor) -> *mut C_tensor {
    let ptr = tensor.as_mut_ptr();
    std::mem::forget(tensor);
    ptr
}

/// Hands `tensors` over to C++ in consecutive slots from `slots` (null for None).
///
/// # Safety
/// `slots` has room for every tensor the iterator yields.
pub unsafe fn hand_over_all(slots: *mut *mut C_tensor, tensors: impl IntoIterator<Item = Option<Tensor>>) {
    for (i, tensor) in tensors.into_iter().enumerate() {
        *slots.add(i) = tensor.map_or(std::ptr::null_mut(), into_raw);
    }
}

/// The error C++ wrote into `err` after a failed call.
pub fn error_from(err: &[c_char]) -> TchError {
    // SAFETY: C++ writes a NUL-terminated message into the buffer.
    TchError::Torch(unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
}

/// Runs `body`, turning a panic (tch's way of reporting a libtorch error) into an Err.
pub fn catch_panic<T>(body: impl FnOnce() -> Result<T, TchError>) -> Result<T, TchError> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| Err(TchError::Torch(panic_message(payload.as_ref()))))
}

/// Runs a callback body so that neither a panic nor an error crosses into C++: either
/// becomes a non-zero return with the message in `err`.
pub(crate) fn guarded(err: *mut c_char, err_len: usize, body: impl FnOnce() -> Result<(), TchError>) -> c_int {
    let message = match catch_panic(body) {
        Ok(()) => return 0,
        Err(TchError::Torch(message)) => message,
        Err(e) => e.to_string(),
    };
    if err_len > 0 {
        let bytes = &message.as_bytes()[..message.len().min(err_len - 1)];
        // SAFETY: C++ passed a buffer of `err_len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr().cast(), err, bytes.len());
            *err.add(bytes.len()) = 0;
        }
    }
    1
}

/// A panic's message, without the C++ backtrace that libtorch appends to its errors.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    let text = crate::error::first_line(text.unwrap_or("(no message)"));
    format!("panic in a custom autograd function: {text}")
}
