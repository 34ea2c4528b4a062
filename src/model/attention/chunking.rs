//! Cutting a sequence into chunks and gathering each chunk's neighbours: the shared
//! machinery of LSH attention (over the bucket-sorted sequence) and local attention.

use tch::Tensor;

/// Tokens added at the end so that `len` becomes a multiple of `chunk_len`.
pub fn padding_to_chunks(len: i64, chunk_len: i64) -> i64 {
    (chunk_len - len % chunk_len) % chunk_len
}

/// Each chunk followed by its neighbours: for chunk j, the chunks j-before ..= j+after,
/// concatenated along the token dimension. Neighbours outside 0..NC are filled with
/// `fill` (callers mask them through positions filled with -1).
///
/// # Shapes
/// `x`: (..., NC, C, ...) with the chunk dimension at `chunk_dim` and the tokens of a
/// chunk at `chunk_dim + 1`; returns (..., NC, (before + 1 + after)·C, ...).
pub fn look_around(x: &Tensor, chunk_dim: i64, before: i64, after: i64, fill: f64) -> Tensor {
    if before == 0 && after == 0 {
        return x.shallow_clone();
    }
    let n_chunks = x.size()[chunk_dim as usize];
    let rank = x.dim() as i64;
    // `pad` lists (start, end) pairs from the last dimension backwards.
    let mut pad = vec![0i64; 2 * rank as usize];
    let slot = 2 * (rank - 1 - chunk_dim) as usize;
    pad[slot] = before;
    pad[slot + 1] = after;
    let padded = x.pad(pad.as_slice(), "constant", fill);
    let windows: Vec<Tensor> = (0..=before + after).map(|offset| padded.narrow(chunk_dim, offset, n_chunks)).collect();
    Tensor::cat(&windows, chunk_dim + 1)
}

/// `look_around` on a ring: chunk 0's neighbour before is the last chunk (and the last
/// chunk's neighbour after is chunk 0), so every window is whole.
///
/// # Shapes
/// `x`: (..., NC, C, ...) with the chunk dimension at `chunk_dim`; returns
/// (..., NC, (before + 1 + after)·C, ...).
pub fn look_around_ring(x: &Tensor, chunk_dim: i64, before: i64, after: i64) -> Tensor {
    if before == 0 && after == 0 {
        return x.shallow_clone();
    }
    // Window j's neighbour at `offset` is chunk j + offset (mod NC): x rolled by -offset.
    let windows: Vec<Tensor> = (-before..=after).map(|offset| x.roll([-offset], [chunk_dim])).collect();
    Tensor::cat(&windows, chunk_dim + 1)
}
