//! The sorted order of LSH attention's rounds: by (round, bucket, position). On the CPU
//! a counting sort (`csrc/bucket_sort.cpp`), O(Tp + n_buckets) per round; elsewhere
//! libtorch's stable argsort of one key per (round, position), which stays as the
//! counting sort's reference.

use std::ffi::{c_char, c_int};

use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

use crate::ffi::checked;

/// The sorted order of every round: by (round, bucket, position). The buckets hold
/// values up to `n_buckets` (padding).
///
/// # Shapes
/// `buckets`: (B, h, r, Tp); returns (B, h, r·Tp) int64: slot -> round·Tp + position.
pub fn sort_slots(buckets: &Tensor, n_buckets: i64) -> Tensor {
    if buckets.device() != Device::Cpu {
        return sort_slots_by_argsort(buckets, n_buckets);
    }
    let (b, h, r, t_pad) = buckets.size4().unwrap();
    let rows = buckets.to_kind(Kind::Int64).view([b * h, r, t_pad]); // (B·h, r, Tp)
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `rows` outlives the call, which writes one new tensor into `out`.
    checked(|err, len| unsafe { reformer_bucket_sort(rows.as_ptr(), n_buckets, &mut out, err, len) })
        .unwrap_or_else(|e| panic!("bucket sort: {e}"));
    // SAFETY: on success `out` holds a tensor the call handed over.
    unsafe { Tensor::from_ptr(out) }.view([b, h, r * t_pad])
}

/// The sort undone: for each round·Tp + position, its slot in the sorted rounds (the
/// inverse permutation of `sort_slots`' result, by one scatter).
///
/// # Shapes
/// `sticker`: (B, h, N) int64, a permutation of 0..N per row; returns (B, h, N) int64.
pub fn undo_sort(sticker: &Tensor) -> Tensor {
    let slots = Tensor::arange(sticker.size()[2], (Kind::Int64, sticker.device())).expand_as(sticker); // (B, h, N)
    sticker.zeros_like().scatter(2, sticker, &slots)
}

/// `sort_slots` by libtorch's stable argsort of round·(n_buckets + 1)·Tp + bucket·Tp +
/// position.
///
/// # Shapes
/// `buckets`: (B, h, r, Tp); returns (B, h, r·Tp) int64.
pub fn sort_slots_by_argsort(buckets: &Tensor, n_buckets: i64) -> Tensor {
    let (b, h, r, t_pad) = buckets.size4().unwrap();
    let device = buckets.device();
    let positions = Tensor::arange(t_pad, (Kind::Int64, device)); // (Tp)
    let round_offset = Tensor::arange(r, (Kind::Int64, device)).view([r, 1]) * ((n_buckets + 1) * t_pad); // (r, 1)
    let sort_keys = (buckets * t_pad + &positions + round_offset).view([b, h, r * t_pad]); // (B, h, r*Tp)
    sort_keys.argsort_stable(true, -1, false)
}

extern "C" {
    fn reformer_bucket_sort(
        buckets: *const C_tensor,
        n_buckets: i64,
        sticker: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counting_sort_equals_the_stable_argsort() {
        tch::manual_seed(3);
        for (n_buckets, t_pad) in [(8, 64), (2, 5), (512, 1000), (64, 1)] {
            // Buckets 0..=n_buckets: the last is the padding bucket.
            let buckets = Tensor::randint(n_buckets + 1, [2, 3, 4, t_pad], (Kind::Int64, Device::Cpu));
            let ours = sort_slots(&buckets, n_buckets);
            let reference = sort_slots_by_argsort(&buckets, n_buckets);
            assert!(ours.equal(&reference), "{n_buckets} buckets, length {t_pad}");
        }
    }

    #[test]
    fn a_bucket_out_of_range_is_an_error_not_a_write_out_of_bounds() {
        let buckets = Tensor::from_slice(&[0i64, 9, 1, 2]).view([1, 1, 1, 4]);
        let result = std::panic::catch_unwind(|| sort_slots(&buckets, 8));
        let message = *result.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("bucket 9 is outside 0..=8"), "{message}");
    }
}
