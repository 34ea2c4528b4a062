//! `reformer`: train, sample from and benchmark the Reformer on libtorch.

pub mod model;
