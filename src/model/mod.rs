//! The Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020) on libtorch.
//!
//! Dimension letters used in shape comments:
//! B batch, T length (tokens), Tp length padded (to a multiple of the chunk, or under
//! the released window rule of the chunk lengths' lcm), H heads,
//! Dh head width, D model width (one residual stream), V vocabulary, R hash rounds,
//! NB buckets per round, C chunk length (tokens), NC chunks (per round), W keys a chunk
//! attends to ((before + 1 + after)·C), S rotated columns per hash round (NB/2, or half
//! the sum of the bucket factors), E any trailing width.
//! Tensors in bucket-sorted order carry an `s` prefix (`sqk`, `sv`, `s_pos`).

pub mod activation_checkpoint;
pub mod attention;
pub mod block;
pub mod config;
pub mod decoding;
pub mod dense;
pub mod feed_forward;
pub mod hash_buckets;
pub mod lm;
pub mod parameters;
pub mod positional;
pub mod reversible;
pub mod seeded_random;
pub mod weight_transfer;

pub use config::{AttentionKind, ModelConfig, PositionalConfig};
pub use decoding::Decoder;
pub use lm::{LossStats, ReformerLm};
pub use seeded_random::ForwardMode;
