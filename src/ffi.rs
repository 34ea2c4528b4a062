//! How Rust and the C++ in `csrc/` talk: tensors cross as `at::Tensor*` (tch's
//! `C_tensor`), and failures cross as a non-zero return with a message in a buffer the
//! caller provides, in both directions: neither a C++ exception nor a Rust panic may
//! unwind across the boundary.

use std::any::Any;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

/// Room for the message of a failed call, in bytes (with its NUL).
pub const ERROR_LEN: usize = 4096;

/// The buffer a C++ call writes its error message into.
pub struct ErrorBuffer([c_char; ERROR_LEN]);

impl ErrorBuffer {
    pub fn new() -> Self {
        Self([0; ERROR_LEN])
    }

    /// The buffer's start, for a C++ call that takes `(err, err_len)` with `ERROR_LEN`.
    pub fn as_mut_ptr(&mut self) -> *mut c_char {
        self.0.as_mut_ptr()
    }

    /// The message written (empty if none).
    pub fn message(&self) -> String {
        // SAFETY: the buffer starts zeroed and C++ writes a NUL-terminated message that
        // fits it, so a NUL is always within bounds.
        unsafe { CStr::from_ptr(self.0.as_ptr()) }.to_string_lossy().into_owned()
    }
}

impl Default for ErrorBuffer {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs a C++ call that returns 0, or non-zero with a message in the buffer it is given
/// (then the Err, with that message).
pub fn checked(call: impl FnOnce(*mut c_char, usize) -> c_int) -> anyhow::Result<()> {
    let mut err = ErrorBuffer::new();
    match call(err.as_mut_ptr(), ERROR_LEN) {
        0 => Ok(()),
        _ => Err(anyhow::anyhow!(err.message())),
    }
}

/// Hands a tensor over to C++, which then owns it (and frees it with `bridge::take`).
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
        // SAFETY: the caller promises room for slot i.
        unsafe { *slots.add(i) = tensor.map_or(std::ptr::null_mut(), into_raw) };
    }
}

/// Shallow copies of `n` tensors that C++ passes by pointer (an undefined tensor stays
/// undefined).
///
/// # Safety
/// `ptrs` points to `n` valid tensor pointers for the duration of the call.
pub unsafe fn borrow_all(ptrs: *const *const C_tensor, n: usize) -> Vec<Tensor> {
    // SAFETY: the caller promises n valid pointers; `clone_from_ptr` adds a reference.
    (0..n).map(|i| unsafe { Tensor::clone_from_ptr((*ptrs.add(i)).cast_mut()) }).collect()
}

/// Runs `body`, turning a panic (tch's way of reporting a libtorch error) into an Err.
pub fn catch_panic<T>(body: impl FnOnce() -> Result<T, TchError>) -> Result<T, TchError> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| Err(TchError::Torch(panic_message(payload.as_ref()))))
}

/// Runs the body of a function C++ calls so that neither a panic nor an error crosses
/// into C++: either becomes a non-zero return with the message in `err` (`err_len` bytes).
pub(crate) fn guarded(err: *mut c_char, err_len: usize, body: impl FnOnce() -> Result<(), TchError>) -> c_int {
    let message = match catch_panic(body) {
        Ok(()) => return 0,
        Err(TchError::Torch(message)) => message,
        Err(e) => e.to_string(),
    };
    if err_len > 0 {
        let mut end = message.len().min(err_len - 1);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let bytes = &message.as_bytes()[..end];
        // SAFETY: C++ passed a buffer of `err_len` bytes, and `end + 1 <= err_len`.
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

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        fn reformer_guard_probe(kind: c_int, err: *mut c_char, err_len: usize) -> c_int;
    }

    /// `bridge::guarded` turns whatever C++ throws into an error with a message, so
    /// that nothing crosses `extern "C"` (which would end the process).
    #[test]
    fn whatever_cpp_throws_comes_back_as_an_error() {
        // SAFETY: the probe writes at most `len` bytes into the buffer it is given.
        let probe = |kind| checked(|err, len| unsafe { reformer_guard_probe(kind, err, len) });
        probe(0).expect("nothing thrown");
        for (kind, message) in [(1, "probe: a c10 error"), (2, "probe: a std error"), (3, "not a std::exception")] {
            let error = probe(kind).expect_err("a throw must come back as an error").to_string();
            assert!(error.contains(message), "{kind}: {error}");
        }
    }
}
