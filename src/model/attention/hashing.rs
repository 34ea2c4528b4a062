//! Angular LSH (paper §2, "Hashing attention"): random rotations, and the bucket of a
//! vector as the argmax over its rotated copy and that copy's negation, one per hash
//! round; optionally factorised into several smaller hashes whose buckets combine as the
//! digits of a mixed-radix number (the released crime-and-punishment model's).

use std::ffi::{c_char, c_int};

use tch::{Device, Tensor};

use torch_sys::C_tensor;

use crate::ffi::checked;
use crate::model::seeded_random;
use crate::precision::{at_least_float32, without_autocast};

/// What decides the buckets of one LSH layer.
#[derive(Clone, Debug, PartialEq)]
pub struct HashSpec {
    /// Buckets per round (the product of `factors` when factorised).
    pub n_buckets: i64,
    /// Factorised hashing: one hash per factor, each over its own slice of rotated
    /// columns; empty for one hash of `n_buckets`.
    pub factors: Vec<i64>,
}

impl HashSpec {
    /// The factors of the hash: `factors`, or `[n_buckets]`.
    fn factors(&self) -> Vec<i64> {
        if self.factors.is_empty() {
            vec![self.n_buckets]
        } else {
            self.factors.clone()
        }
    }

    /// Rotated columns per round, S: half of each factor's buckets, summed.
    pub fn rotation_width(&self) -> i64 {
        self.factors().iter().map(|f| f / 2).sum()
    }
}

/// Rotations derived from a forward pass's seed by the counter-based generator, shared
/// by the heads (a replay draws them again, bit for bit).
///
/// # Shapes
/// returns (1, Dh, R, S)
pub fn random_rotations(seed: u64, d_head: i64, n_hashes: i64, spec: &HashSpec, device: Device) -> Tensor {
    seeded_random::normal(seed, &[1, d_head, n_hashes, spec.rotation_width()], device)
}

/// Rotations per head drawn from libtorch's CPU generator seeded with `seed` (a generator
/// of their own: the global one is left as it was). These are the numbers of
/// `torch.manual_seed(seed); torch.randn(H, Dh, R, S)` on the CPU, the draw of
/// transformers' Reformer when its `hash_seed` is set.
///
/// # Shapes
/// returns (H, Dh, R, S)
pub fn seeded_rotations(
    seed: u64,
    n_heads: i64,
    d_head: i64,
    n_hashes: i64,
    spec: &HashSpec,
    device: Device,
) -> Tensor {
    let shape = [n_heads, d_head, n_hashes, spec.rotation_width()];
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `shape` outlives the call, which writes one new tensor into `out`.
    checked(|err, len| unsafe { reformer_seeded_randn(seed, shape.as_ptr(), shape.len(), &mut out, err, len) })
        .unwrap_or_else(|e| panic!("cannot draw the seeded rotations: {e}"));
    // SAFETY: on success `out` holds a tensor the call handed over.
    unsafe { Tensor::from_ptr(out) }.to_device(device)
}

/// Elements of the rotated-vector tensor that hashing materialises at once: with the
/// paper's n_buckets ≈ 2·T/chunk_len, all T positions at once would take O(T²/chunk_len)
/// memory (4 GiB at T = 64K), so positions are hashed a slice at a time. 2^22 (16 MiB)
/// was the fastest of 2^16..2^24 on a 2-core CPU at T = 16K.
const HASH_SLICE_ELEMENTS: i64 = 1 << 22;

/// The buckets of each vector in each round. No gradient flows here.
///
/// # Shapes
/// `qk`: (B, H, T, Dh), `rotations`: (1 or H, Dh, R, S); returns (B, H, R, T) int64.
pub fn hash_buckets(qk: &Tensor, rotations: &Tensor, spec: &HashSpec) -> Tensor {
    let (b, h, t, dh) = qk.size4().unwrap();
    let (n_rotation_heads, _, r, width) = rotations.size4().unwrap();
    // In float32 (or wider) whatever the run's precision: a bucket decided by rounding
    // would differ between precisions, and between a forward and its replay.
    let qk = at_least_float32(qk);
    let rotations = rotations.to_kind(qk.kind());
    let rotations = if n_rotation_heads == 1 {
        rotations.view([dh, r * width]) // (Dh, R*S)
    } else {
        rotations.view([n_rotation_heads, 1, dh, r * width]) // (H, 1, Dh, R*S)
    };
    let slice_len = (HASH_SLICE_ELEMENTS / (b * h * r * width)).clamp(1, t.max(1));
    without_autocast(qk.device(), || {
        tch::no_grad(|| {
            let slices: Vec<Tensor> = (0..t)
                .step_by(slice_len as usize)
                .map(|start| {
                    let len = slice_len.min(t - start);
                    let rotated = if n_rotation_heads == 1 {
                        qk.narrow(2, start, len).matmul(&rotations) // (B, H, L, R*S)
                    } else {
                        // Per head: (H, B, L, Dh) · (H, 1, Dh, R*S).
                        qk.narrow(2, start, len).transpose(0, 1).matmul(&rotations).transpose(0, 1)
                    };
                    let rotated = rotated.reshape([b, h, len, r, width]); // (B, H, L, R, S)
                    combined_bucket(&rotated, spec).permute([0, 1, 3, 2]) // (B, H, R, L)
                })
                .collect();
            Tensor::cat(&slices, 3) // (B, H, R, T)
        })
    })
}

/// The bucket of each rotated vector: per factor f, the angular hash of its f/2 columns,
/// combined as bucket = b0 + f0·(b1 + f1·(b2 + ...)).
///
/// # Shapes
/// `rotated`: (..., S); returns (...) int64.
fn combined_bucket(rotated: &Tensor, spec: &HashSpec) -> Tensor {
    let mut bucket: Option<Tensor> = None;
    let (mut column, mut radix) = (0, 1);
    for factor in spec.factors() {
        let digit = angular_bucket(&rotated.narrow(-1, column, factor / 2)) * radix;
        bucket = Some(match bucket {
            Some(bucket) => bucket + digit,
            None => digit,
        });
        column += factor / 2;
        radix *= factor;
    }
    bucket.expect("a hash has at least one factor")
}

/// Argmax over [x; -x]: the position of x's largest entry, or of its smallest shifted by
/// the width when that one's magnitude is larger (ties go to x, as the concatenation's
/// first maximum), which spares materialising [x; -x] or |x|.
///
/// # Shapes
/// `x`: (..., F/2); returns (...) int64 in 0..F.
fn angular_bucket(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1];
    let (largest, at_largest) = x.max_dim(-1, false);
    let (smallest, at_smallest) = x.min_dim(-1, false);
    at_largest.where_self(&largest.ge_tensor(&-smallest), &(at_smallest + half))
}

extern "C" {
    fn reformer_seeded_randn(
        seed: u64,
        shape: *const i64,
        n_dims: usize,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn seeded_rotations_are_the_same_on_every_call_and_leave_the_global_generator_alone() {
        let spec = HashSpec { n_buckets: 8, factors: vec![] };
        tch::manual_seed(5);
        let expected_next = Tensor::randn([3], (Kind::Float, Device::Cpu));
        tch::manual_seed(5);
        let a = seeded_rotations(9, 2, 4, 3, &spec, Device::Cpu);
        let b = seeded_rotations(9, 2, 4, 3, &spec, Device::Cpu);
        assert_eq!(a.size(), [2, 4, 3, 4]);
        assert!(a.equal(&b));
        let next = Tensor::randn([3], (Kind::Float, Device::Cpu));
        assert!(next.equal(&expected_next), "the global generator moved");
        tch::manual_seed(9);
        let global = Tensor::randn([2, 4, 3, 4], (Kind::Float, Device::Cpu));
        assert!(a.equal(&global), "not the draw of manual_seed(9); randn");
    }

    #[test]
    fn factorised_buckets_are_mixed_radix_digits_of_each_slice_hash() {
        // One vector, rotated columns chosen by hand: factor 4 over columns 0..2, factor
        // 6 over columns 2..5.
        let rotated = Tensor::from_slice(&[0.5f32, -2.0, 1.0, 3.0, -0.5]).view([1, 5]);
        let spec = HashSpec { n_buckets: 24, factors: vec![4, 6] };
        // Factor 4: [0.5, -2, -0.5, 2] → argmax 3. Factor 6: [1, 3, -0.5, -1, -3, 0.5] → 1.
        let bucket = combined_bucket(&rotated, &spec);
        assert_eq!(bucket.int64_value(&[0]), 3 + 4);
        let plain = HashSpec { n_buckets: 10, factors: vec![] };
        // [0.5, -2, 1, 3, -0.5, -0.5, 2, -1, -3, 0.5] → argmax 3.
        assert_eq!(combined_bucket(&rotated, &plain).int64_value(&[0]), 3);
    }

    #[test]
    fn a_factorised_hash_is_the_mixed_radix_number_of_plain_hashes_of_its_slices() {
        let qk = seeded_random::normal(4, &[2, 3, 50, 16], Device::Cpu); // (B, H, T, Dh)
        let spec = HashSpec { n_buckets: 48, factors: vec![6, 8] };
        let rotations = random_rotations(5, 16, 2, &spec, Device::Cpu); // (1, Dh, R, 3 + 4)
        let buckets = hash_buckets(&qk, &rotations, &spec);
        let plain = |n: i64, start: i64| {
            let slice = rotations.narrow(3, start, n / 2).contiguous();
            hash_buckets(&qk, &slice, &HashSpec { n_buckets: n, factors: vec![] })
        };
        let expected = plain(6, 0) + plain(8, 3) * 6;
        assert!(buckets.equal(&expected));
        assert_eq!(buckets.max().int64_value(&[]) < 48, true);
    }
}
