//! What data parallelism does with a process group: one model on every rank (rank 0's
//! parameters broadcast, a check that they stay equal) and gradients averaged over the
//! ranks after each backward, in size-bounded buckets.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::process_group::ProcessGroup;

/// Gradient bytes per all-reduce (PyTorch DDP's default bucket is 25 MiB).
pub const BUCKET_BYTES: i64 = 25 << 20;

/// Groups of consecutive tensors of one dtype and device holding at most `bucket_bytes`
/// together (a larger tensor alone), as index ranges.
fn buckets(tensors: &[Tensor], bucket_bytes: i64) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        let same_kind = i == start || (t.kind() == tensors[start].kind() && t.device() == tensors[start].device());
        if i > start && (bytes + size > bucket_bytes || !same_kind) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < tensors.len() {
        out.push(start..tensors.len());
    }
    out
}

/// Applies `collective` to each bucket of `tensors` as one flat tensor, then writes
/// the results back into the tensors.
fn bucketed(tensors: &[Tensor], bucket_bytes: i64, mut collective: impl FnMut(&Tensor) -> Result<()>) -> Result<()> {
    for range in buckets(tensors, bucket_bytes) {
        let members = &tensors[range];
        let flat = tch::no_grad(|| Tensor::cat(&members.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0));
        collective(&flat)?;
        tch::no_grad(|| {
            let mut offset = 0;
            for t in members {
                let n = t.numel() as i64;
                t.shallow_clone().copy_(&flat.narrow(0, offset, n).view_as(t));
                offset += n;
            }
        });
    }
    Ok(())
}

/// Rank 0's values of `variables` on every rank.
pub fn broadcast_parameters(group: &ProcessGroup, variables: &[Tensor]) -> Result<()> {
    bucketed(variables, BUCKET_BYTES, |flat| group.broadcast(&[flat], 0))
}

/// Replaces every defined gradient of `variables` by its mean over the ranks, in
/// buckets of at most `bucket_bytes`. Every rank must hold the same defined gradients.
pub fn average_gradients(group: &ProcessGroup, variables: &[Tensor], bucket_bytes: i64) -> Result<()> {
    let grads: Vec<Tensor> = variables.iter().map(Tensor::grad).filter(Tensor::defined).collect();
    let world = group.world_size as f64;
    bucketed(&grads, bucket_bytes, |flat| {
        group.all_reduce_sum(&[flat])?;
        tch::no_grad(|| {
            let _ = flat.shallow_clone().divide_scalar_(world);
        });
        Ok(())
    })
}

/// Fails when the ranks' parameters differ: every rank's sum and sum of squares of all
/// parameters (float64) must equal rank 0's. A cheap guard that data parallelism keeps
/// one model.
pub fn check_parameters_agree(group: &ProcessGroup, variables: &[Tensor]) -> Result<()> {
    let (sum, squares) = tch::no_grad(|| {
        variables.iter().fold((0.0, 0.0), |(s, q), v| {
            let v = v.to_kind(Kind::Double);
            (s + v.sum(Kind::Double).double_value(&[]), q + (&v * &v).sum(Kind::Double).double_value(&[]))
        })
    });
    let from_main = Tensor::from_slice(&[sum, squares]).to(group.device);
    group.broadcast(&[&from_main], 0)?;
    let main = Vec::<f64>::try_from(&from_main.to(tch::Device::Cpu))?;
    let agree = group.sum_f64(&[if main == [sum, squares] { 0.0 } else { 1.0 }])?;
    if agree[0] != 0.0 {
        bail!(
            "rank {}: parameters differ between ranks (checksums {:?} here, {:?} on rank 0)",
            group.rank,
            [sum, squares],
            main
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_size_bound_and_keep_order() {
        let sizes = [10, 10, 30, 5, 5, 5];
        let tensors: Vec<Tensor> = sizes.iter().map(|&n| Tensor::zeros([n], (Kind::Float, tch::Device::Cpu))).collect();
        // 4 bytes per float: a bound of 80 bytes holds 20 floats.
        assert_eq!(buckets(&tensors, 80), vec![0..2, 2..3, 3..6]);
        assert_eq!(buckets(&tensors, 1 << 20), vec![0..6]);
        assert!(buckets(&[], 80).is_empty());
    }
}
