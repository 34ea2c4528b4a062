//! Randomness drawn from explicit seeds with tensor ops on the tensor's own device: a
//! counter-based generator (a 32-bit integer hash of each element's index, an int64 below
//! 2^63), so that a forward pass can be replayed bit for bit (the reversible backward does)
//! without touching libtorch's global generator.

use tch::{Device, Kind, Tensor};

const LOW_32_BITS: i64 = 0xFFFF_FFFF;
/// Counters below this have a zero high half (the generator's original, 32-bit range).
const HIGH_HALF_ONE: i64 = 1 << 32;
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
    random_bits_at(seed, &Tensor::arange(n, (Kind::Int64, device)), n)
}

/// 32-bit random integers (as int64) for the given counters, all in 0..`end`, under
/// `seed`. Two rounds of `hash32`: the low half of each counter is keyed by the low half
/// of the key, the hash of the high half joins the high half of the key. As hash32(0) is
/// 0, counters below 2^32 get the bits they had when counters were 32-bit (and with
/// `end` ≤ 2^32 their high half is not computed).
fn random_bits_at(seed: u64, counters: &Tensor, end: i64) -> Tensor {
    let key = splitmix64(seed);
    let key_lo = (key & 0xFFFF_FFFF) as i64;
    let key_hi = (key >> 32) as i64;
    if end <= HIGH_HALF_ONE {
        return hash32(&hash32(&counters.bitwise_xor(key_lo)).bitwise_xor(key_hi));
    }
    let low = counters.bitwise_and(LOW_32_BITS);
    let high = hash32(&counters.bitwise_right_shift_tensor_scalar(32));
    hash32(&hash32(&low.bitwise_xor(key_lo)).bitwise_xor(key_hi).bitwise_xor_tensor(&high))
}

/// Uniforms in [0, 1) on a 2^-24 grid from random bits.
fn bits_to_uniform(bits: &Tensor) -> Tensor {
    bits.bitwise_right_shift_tensor_scalar(32 - UNIFORM_BITS).to_kind(Kind::Float) / (1i64 << UNIFORM_BITS) as f64
}

/// Uniform float32 samples in [0, 1).
pub fn uniform(seed: u64, shape: &[i64], device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    bits_to_uniform(&random_bits(seed, n, device)).view(shape)
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

/// `dropout` over rows `start..start + L` of a (B, `total_len`, ...) tensor, given only
/// those rows: the mask is exactly those rows' share of `dropout`'s mask over the whole
/// tensor, so a position-wise branch can be evaluated a slice of positions at a time.
///
/// # Shapes
/// `rows`: (B, L, ...) with L ≤ total_len − start; returns the same shape.
pub fn dropout_rows(rows: &Tensor, p: f64, seed: u64, train: bool, start: i64, total_len: i64) -> Tensor {
    ForwardMode { seed, train, rows: BatchRows::default() }.dropout_rows(rows, p, start, total_len)
}

/// `dropout` over the block of a tensor of shape `whole` that starts at `offset` (one
/// index per dimension), given only that block: each element's counter is its row-major
/// index in the whole, so the mask is exactly the block's share of `dropout`'s mask over
/// the whole tensor, and a computation can be carried out a slice (of positions, heads,
/// hash rounds) at a time.
///
/// # Shapes
/// `block`: one size per dimension of `whole`, each ≤ whole − offset; returns the same.
pub fn dropout_block(block: &Tensor, p: f64, seed: u64, train: bool, whole: &[i64], offset: &[i64]) -> Tensor {
    if !train || p == 0.0 {
        return block.shallow_clone();
    }
    let shape = block.size();
    assert!(
        shape.len() == whole.len() && offset.len() == whole.len(),
        "dropout_block: one size and offset per dimension"
    );
    let n_whole = whole.iter().try_fold(1i64, |n, &size| n.checked_mul(size));
    let n_whole = n_whole.unwrap_or_else(|| panic!("seeded_random: {whole:?} exceeds the 2^63 counter range"));
    let device = block.device();
    let rank = shape.len();
    // Row-major strides of the whole; each dimension's (index + offset) · stride, viewed
    // along its own axis, and their broadcast sum is every element's counter.
    let strides: Vec<i64> = (0..rank).map(|dim| whole[dim + 1..].iter().product()).collect();
    let counters = (0..rank)
        .map(|dim| {
            let mut view = vec![1; rank];
            view[dim] = shape[dim];
            let index = (Tensor::arange(shape[dim], (Kind::Int64, device)) + offset[dim]) * strides[dim];
            index.view(view.as_slice()) // (1, .., S_dim, .., 1)
        })
        .reduce(|sum, index| sum + index)
        .expect("a tensor has at least one dimension"); // the block's shape
    let keep = bits_to_uniform(&random_bits_at(seed, &counters, n_whole)).ge(p);
    block * keep.to_kind(block.kind()) / (1.0 - p)
}

/// Where a tensor sits in a larger one, for its share of that one's dropout mask: viewed
/// as `view`, it is the block of a tensor of shape `whole` that starts at `offset`.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskShare {
    pub view: Vec<i64>,
    pub whole: Vec<i64>,
    pub offset: Vec<i64>,
}

/// Which rows of a step's whole batch a forward pass computes. Micro-batching runs a
/// step's batch in parts; each part's dropout masks are its rows' share of the whole
/// batch's masks, so that the parts together compute what the whole batch would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchRows {
    /// The first row's index in the whole batch.
    pub start: i64,
    /// Rows in the whole batch; 0: the pass's own batch is the whole.
    pub total: i64,
}

/// The randomness of one forward pass: whether dropout is on, the seed from which every
/// layer derives its own (hash rotations, dropout masks), and the rows of the whole batch
/// it computes. Every tensor that dropout applies to has the batch as its first dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardMode {
    pub seed: u64,
    pub train: bool,
    pub rows: BatchRows,
}

impl ForwardMode {
    pub fn train(seed: u64) -> Self {
        Self { seed, train: true, rows: BatchRows::default() }
    }

    /// Evaluation: no dropout; LSH rotations still come from `seed`.
    pub fn eval(seed: u64) -> Self {
        Self { seed, train: false, rows: BatchRows::default() }
    }

    /// This mode for rows `start..` of a whole batch of `total` rows.
    pub fn in_batch(self, start: i64, total: i64) -> Self {
        Self { rows: BatchRows { start, total }, ..self }
    }

    /// The mode of a part (a layer, a purpose) of this forward pass.
    pub fn child(&self, tag: u64) -> Self {
        Self { seed: derive_seed(self.seed, tag), ..*self }
    }

    /// `dropout` with this mode's seed, as this pass's rows' share of the whole batch's.
    pub fn dropout(&self, x: &Tensor, p: f64) -> Tensor {
        if self.rows.total == 0 {
            return dropout(x, p, self.seed, self.train);
        }
        let whole = x.size();
        self.dropout_block(x, p, &whole, &vec![0; whole.len()])
    }

    /// `dropout_rows` with this mode's seed, as this pass's rows' share of the whole batch's.
    pub fn dropout_rows(&self, rows: &Tensor, p: f64, start: i64, total_len: i64) -> Tensor {
        let mut whole = rows.size();
        whole[1] = total_len;
        let mut offset = vec![0; whole.len()];
        offset[1] = start;
        self.dropout_block(rows, p, &whole, &offset)
    }

    /// `dropout_block` with this mode's seed; the whole's first dimension is the batch,
    /// widened to the whole batch's rows.
    pub fn dropout_block(&self, block: &Tensor, p: f64, whole: &[i64], offset: &[i64]) -> Tensor {
        let (mut whole, mut offset) = (whole.to_vec(), offset.to_vec());
        if self.rows.total > 0 {
            whole[0] = self.rows.total;
            offset[0] += self.rows.start;
        }
        dropout_block(block, p, self.seed, self.train, &whole, &offset)
    }

    /// `dropout` of `x` as its `share` of a larger tensor's, with this mode's seed (see
    /// `dropout_block`).
    pub fn dropout_share(&self, x: &Tensor, p: f64, share: &MaskShare) -> Tensor {
        let block = x.view(share.view.as_slice());
        self.dropout_block(&block, p, &share.whole, &share.offset).view(x.size().as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator as it was when counters were 32-bit: models trained then must keep
    /// their masks.
    fn bits_of_32_bit_counters(seed: u64, counters: &Tensor) -> Tensor {
        let key = splitmix64(seed);
        let (key_lo, key_hi) = ((key & 0xFFFF_FFFF) as i64, (key >> 32) as i64);
        hash32(&hash32(&counters.bitwise_xor(key_lo)).bitwise_xor(key_hi))
    }

    fn counters(values: &[i64]) -> Tensor {
        Tensor::from_slice(values)
    }

    #[test]
    fn counters_below_2_32_keep_their_bits() {
        let below = Tensor::cat(
            &[Tensor::arange(4096, (Kind::Int64, Device::Cpu)), counters(&[65_535, 1 << 31, (1 << 32) - 1])],
            0,
        );
        for seed in [0, 7, 0xDEAD_BEEF] {
            let expected = bits_of_32_bit_counters(seed, &below);
            assert!(random_bits_at(seed, &below, 1 << 32).equal(&expected), "seed {seed}");
            assert!(random_bits_at(seed, &below, i64::MAX).equal(&expected), "seed {seed}, 64-bit counters");
        }
    }

    #[test]
    fn counters_above_2_32_differ_from_their_low_halves() {
        let low = counters(&[0, 1, 12_345, (1 << 32) - 1]);
        for high in [1i64 << 32, 5 << 32, i64::MAX & !LOW_32_BITS] {
            let bits = random_bits_at(11, &(&low + high), i64::MAX);
            let twins = random_bits_at(11, &low, 1 << 32);
            assert!(bits.ne_tensor(&twins).all().int64_value(&[]) == 1, "high half {high:#x}");
            assert!(bits.ge(0).logical_and(&bits.le(LOW_32_BITS)).all().int64_value(&[]) == 1);
        }
    }

    #[test]
    fn a_block_of_a_tensor_past_2_32_elements_gets_its_share_of_the_mask() {
        // A (3, 2^31, 2) whole, of which only the block at (2, 2^31 - 2, 0) is made.
        let whole = [3, 1 << 31, 2];
        let block = Tensor::ones([1, 2, 2], (Kind::Float, Device::Cpu));
        let dropped = dropout_block(&block, 0.5, 3, true, &whole, &[2, (1 << 31) - 2, 0]);
        let first = 2 * (1i64 << 32) + ((1 << 31) - 2) * 2;
        let counters = Tensor::arange_start(first, first + 4, (Kind::Int64, Device::Cpu)).view([1, 2, 2]);
        let keep = bits_to_uniform(&random_bits_at(3, &counters, i64::MAX)).ge(0.5).to_kind(Kind::Float);
        assert!(dropped.equal(&(keep * 2.0)));
    }

    #[test]
    fn the_last_block_of_exactly_2_32_elements_gets_the_bits_of_64_bit_counters() {
        // enwik8-paper's LSH attention probabilities at batch 4: (B, H, R, NC, C, W).
        let whole = [4, 8, 4, 256, 256, 512];
        let block = Tensor::ones([1, 1, 1, 1, 2, 512], (Kind::Float, Device::Cpu));
        let dropped = dropout_block(&block, 0.5, 9, true, &whole, &[3, 7, 3, 255, 254, 0]);
        let first = (1i64 << 32) - 2 * 512;
        let counters = Tensor::arange_start(first, 1 << 32, (Kind::Int64, Device::Cpu)).view([1, 1, 1, 1, 2, 512]);
        let keep = bits_to_uniform(&random_bits_at(9, &counters, i64::MAX)).ge(0.5).to_kind(Kind::Float);
        assert!(dropped.equal(&(keep * 2.0)));
    }
}
