//! Randomness drawn from explicit seeds with tensor ops on the tensor's own device: a
//! counter-based generator (a 32-bit integer hash of each element's index), so that a
//! forward pass can be replayed bit for bit (the reversible backward does) without
//! touching libtorch's global generator.

use tch::{Device, Kind, Tensor};

const LOW_32_BITS: i64 = 0xFFFF_FFFF;
/// Multipliers of the two-round integer hash found by Wellons' hash-prospector
/// (`x ^= x >> 16; x *= 0x21f0aaad; x ^= x >> 15; x *= 0x735a2d97; x ^= x >> 15`).
/// Both are below 2^31, so products of 32-bit values stay inside an int64.
const HASH_MULTIPLIERS: [i64; 2] = [0x21f0_aaad, 0x735a_2d97];
/// A float32 has 24 bits of mantissa: the top 24 hash bits give uniforms on a 2^-24 grid.
const UNIFORM_BITS: i64 = 24;

/// SplitMix64's finaliser: mixes a 64-bit value into an unrelated one.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for one use (a layer, a purpose) derived from a parent seed.
pub fn derive_seed(seed: u64, tag: u64) -> u64 {
    splitmix64(seed ^ splitmix64(tag))
}

/// The hash applied to int64 tensors holding 32-bit values.
fn hash32(x: &Tensor) -> Tensor {
    let mut x = x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(16));
    x = (x * HASH_MULTIPLIERS[0]).bitwise_and(LOW_32_BITS);
    x = x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(15));
    x = (x * HASH_MULTIPLIERS[1]).bitwise_and(LOW_32_BITS);
    x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(15))
}

/// `n` 32-bit random integers (as int64) for counters 0..n under `seed`.
fn random_bits(seed: u64, n: i64, device: Device) -> Tensor {
    assert!(n < (1 << 32), "seeded_random: {n} elements exceed the 2^32 counter range");
    let key = splitmix64(seed);
    let key_lo = (key & 0xFFFF_FFFF) as i64;
    let key_hi = (key >> 32) as i64;
    let counters = Tensor::arange(n, (Kind::Int64, device));
    hash32(&hash32(&counters.bitwise_xor(key_lo)).bitwise_xor(key_hi))
}

/// Uniform float32 samples in [0, 1).
pub fn uniform(seed: u64, shape: &[i64], device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let top = random_bits(seed, n, device).bitwise_right_shift_tensor_scalar(32 - UNIFORM_BITS);
    (top.to_kind(Kind::Float) / (1i64 << UNIFORM_BITS) as f64).view(shape)
}

/// Standard normal float32 samples (Box-Muller on two independent uniform streams).
pub fn normal(seed: u64, shape: &[i64], device: Device) -> Tensor {
    let u1 = uniform(derive_seed(seed, 1), shape, device);
    let u2 = uniform(derive_seed(seed, 2), shape, device);
    // 1 - u1 lies in (0, 1], so the log is finite.
    let radius = ((-u1 + 1.0).log() * -2.0).sqrt();
    radius * (u2 * (2.0 * std::f64::consts::PI)).cos()
}

/// Inverted dropout with a mask drawn from `seed`: the same seed gives the same mask.
pub fn dropout(x: &Tensor, p: f64, seed: u64, train: bool) -> Tensor {
    if !train || p == 0.0 {
        return x.shallow_clone();
    }
    let keep = uniform(seed, &x.size(), x.device()).ge(p);
    x * keep.to_kind(x.kind()) / (1.0 - p)
}

/// The randomness of one forward pass: whether dropout is on, and the seed from which
/// every layer derives its own (hash rotations, dropout masks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardMode {
    pub seed: u64,
    pub train: bool,
}

impl ForwardMode {
    pub fn train(seed: u64) -> Self {
        Self { seed, train: true }
    }

    /// Evaluation: no dropout; LSH rotations still come from `seed`.
    pub fn eval(seed: u64) -> Self {
        Self { seed, train: false }
    }

    /// The mode of a part (a layer, a purpose) of this forward pass.
    pub fn child(&self, tag: u64) -> Self {
        Self { seed: derive_seed(self.seed, tag), train: self.train }
    }
}
