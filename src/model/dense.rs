//! Linear layers, on the CPU in float32 through oneDNN's matmul: on the CPUs this project
//! is measured on it runs the model's shapes at about twice the rate of libtorch's default
//! (MKL's sgemm, which takes a generic code path on AMD CPUs; `scripts/gemm-rates.cpp`).
//! Elsewhere (CUDA, autocast, other dtypes, a libtorch without oneDNN, a CPU whose
//! oneDNN matmul libtorch refuses: `cpu_paths::linear_path`) a layer is libtorch's own
//! `linear`. The two differ only in the rounding of their sums.

use std::ffi::{c_char, c_int};

use tch::{nn, Device, Kind, TchError, Tensor};
use torch_sys::C_tensor;

use crate::autograd::{self, Function, Keep};
use crate::cpu_paths::{self, LinearPath};
use crate::ffi::checked;
use crate::precision::Precision;

/// `layer` applied to `x`.
///
/// # Shapes
/// `x`: (..., in); returns (..., out).
pub fn linear(x: &Tensor, layer: &nn::Linear) -> Tensor {
    if !through_onednn(x, layer) {
        return x.apply(layer);
    }
    let mut shape = x.size();
    let (in_dim, out_dim) = (shape[shape.len() - 1], layer.ws.size()[0]);
    let rows = x.reshape([-1, in_dim]); // (M, in)
    let mut inputs = vec![&rows, &layer.ws];
    inputs.extend(&layer.bs);
    let function = OnednnLinear { with_bias: layer.bs.is_some() };
    let out = autograd::run(function, &inputs, 1, Keep::Inputs).remove(0); // (M, out)
    *shape.last_mut().unwrap() = out_dim;
    out.view(shape.as_slice())
}

/// Whether `linear` takes oneDNN's matmul for these tensors.
fn through_onednn(x: &Tensor, layer: &nn::Linear) -> bool {
    x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && layer.ws.kind() == Kind::Float
        && Precision::current(Device::Cpu) == Precision::F32
        && *cpu_paths::linear_path() == LinearPath::Onednn
}

/// The autograd node of one layer: inputs x (M, in), weight (out, in) and the bias if any.
struct OnednnLinear {
    with_bias: bool,
}

fn call(body: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), TchError> {
    checked(body).map_err(|e| TchError::Torch(e.to_string()))
}

impl Function for OnednnLinear {
    fn name(&self) -> &'static str {
        "oneDNN linear"
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let bias = inputs.get(2).map_or(std::ptr::null(), |b| b.as_ptr());
        let mut y = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call.
        call(|err, len| unsafe {
            reformer_onednn_linear(inputs[0].as_ptr(), inputs[1].as_ptr(), bias, &mut y, err, len)
        })?;
        // SAFETY: handed over by the successful call.
        Ok(vec![unsafe { Tensor::from_ptr(y) }])
    }

    fn backward(&self, kept: &[Tensor], grad_outputs: &[Tensor]) -> Result<Vec<Option<Tensor>>, TchError> {
        let (mut dx, mut dw, mut db) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
        let dy = &grad_outputs[0];
        if !dy.defined() {
            return Ok(kept.iter().map(|_| None).collect());
        }
        // SAFETY: every pointer is valid for the call.
        call(|err, len| unsafe {
            reformer_onednn_linear_backward(
                kept[0].as_ptr(),
                kept[1].as_ptr(),
                dy.as_ptr(),
                c_int::from(self.with_bias),
                &mut dx,
                &mut dw,
                &mut db,
                err,
                len,
            )
        })?;
        // SAFETY: handed over by the successful call (the bias gradient only when asked).
        let mut grads = unsafe { vec![Some(Tensor::from_ptr(dx)), Some(Tensor::from_ptr(dw))] };
        if self.with_bias {
            // SAFETY: as above.
            grads.push(Some(unsafe { Tensor::from_ptr(db) }));
        }
        Ok(grads)
    }
}

extern "C" {
    fn reformer_onednn_linear(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        y: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn reformer_onednn_linear_backward(
        x: *const C_tensor,
        w: *const C_tensor,
        dy: *const C_tensor,
        want_bias: c_int,
        dx: *mut *mut C_tensor,
        dw: *mut *mut C_tensor,
        db: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}
