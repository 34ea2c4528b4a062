//! The trainable tensors of tch's built-in layers, for layers that list their own (the
//! reversible stack needs every parameter its blocks read as an input of its node).

use tch::{nn, Tensor};

/// A linear layer's weight and, when it has one, its bias.
pub fn linear_parameters(linear: &nn::Linear) -> Vec<Tensor> {
    std::iter::once(linear.ws.shallow_clone()).chain(linear.bs.as_ref().map(Tensor::shallow_clone)).collect()
}

/// A LayerNorm's scale and shift, where it has them.
pub fn layer_norm_parameters(norm: &nn::LayerNorm) -> Vec<Tensor> {
    norm.ws.iter().chain(&norm.bs).map(Tensor::shallow_clone).collect()
}
