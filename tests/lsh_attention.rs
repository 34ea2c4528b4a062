//! LSH attention against an independent, loop-based reference (per query: its buckets,
//! the sorted order, its chunk and the chunks it may see, then a softmax), and against
//! dense shared-QK attention when one chunk covers everything.

use reformer::model::attention::hashing::{hash_buckets, random_rotations, HashSpec};
use reformer::model::attention::lsh::{lsh_attend, normalize, LshParams, WindowRule, MASKED_LOGIT, SELF_LOGIT};
use reformer::model::ForwardMode;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;

fn params(n_hashes: i64, n_buckets: i64, chunk_len: i64, causal: bool, strict: bool) -> LshParams {
    LshParams {
        n_hashes,
        hash: HashSpec { n_buckets, factors: vec![] },
        chunk_len,
        n_chunks_before: 1,
        n_chunks_after: if causal { 0 } else { 1 },
        causal,
        rule: if strict { WindowRule::Strict } else { WindowRule::Paper },
        dropout: 0.0,
        sliced: false,
        ..Default::default()
    }
}

fn to_vec(x: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(x.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// The reference: one (batch, head) at a time, one query at a time, in f64.
fn reference(qk: &Tensor, v: &Tensor, rotations: &Tensor, p: &LshParams) -> Tensor {
    let (b, h, t, dh) = qk.size4().unwrap();
    let (_, _, r, half) = rotations.size4().unwrap();
    let c = p.chunk_len;
    let t_pad = (t + c - 1) / c * c;
    let n_chunks = t_pad / c;
    let rot = to_vec(rotations); // [d][round][k]
    let mut out = vec![0f64; (b * h * t * dh) as usize];
    for bi in 0..b {
        for hi in 0..h {
            let q = to_vec(&qk.get(bi).get(hi)); // [pos][d]
            let vals = to_vec(&v.get(bi).get(hi));
            let vec_of = |data: &Vec<f64>, pos: i64| -> Vec<f64> {
                if pos < t {
                    data[(pos * dh) as usize..((pos + 1) * dh) as usize].to_vec()
                } else {
                    vec![0.0; dh as usize]
                }
            };
            let mut round_out = vec![vec![vec![0f64; dh as usize]; t as usize]; r as usize];
            let mut round_lse = vec![vec![0f64; t as usize]; r as usize];
            for ri in 0..r {
                // Bucket of every (padded) position: argmax over [xR, -xR]; padding last.
                let bucket = |pos: i64| -> i64 {
                    if pos >= t {
                        return p.hash.n_buckets;
                    }
                    let x = vec_of(&q, pos);
                    let mut projections = vec![0f64; (2 * half) as usize];
                    for k in 0..half {
                        let dot: f64 = (0..dh).map(|d| x[d as usize] * rot[((d * r + ri) * half + k) as usize]).sum();
                        projections[k as usize] = dot;
                        projections[(half + k) as usize] = -dot;
                    }
                    let mut best = 0;
                    for (i, &value) in projections.iter().enumerate() {
                        if value > projections[best] {
                            best = i;
                        }
                    }
                    best as i64
                };
                let buckets: Vec<i64> = (0..t_pad).map(bucket).collect();
                let mut order: Vec<i64> = (0..t_pad).collect();
                order.sort_by_key(|&pos| (buckets[pos as usize], pos));
                let slot_of = |pos: i64| order.iter().position(|&x| x == pos).unwrap() as i64;
                for query in 0..t {
                    let q_slot = slot_of(query);
                    let q_chunk = q_slot / c;
                    let qv = vec_of(&q, query);
                    let mut logits = Vec::new();
                    let mut keys = Vec::new();
                    for k_chunk in q_chunk - p.n_chunks_before..=q_chunk + p.n_chunks_after {
                        if k_chunk < 0 || k_chunk >= n_chunks {
                            continue;
                        }
                        for k_slot in k_chunk * c..(k_chunk + 1) * c {
                            let key = order[k_slot as usize];
                            let mut hidden = key >= t || (p.causal && key > query);
                            if p.rule == WindowRule::Strict {
                                let distance = q_slot - k_slot;
                                hidden |=
                                    buckets[key as usize] != buckets[query as usize] || !(0..=c).contains(&distance);
                            }
                            let logit = if key == query {
                                SELF_LOGIT
                            } else if hidden {
                                MASKED_LOGIT
                            } else {
                                let kv = vec_of(&q, key);
                                let norm = kv.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-6);
                                qv.iter().zip(&kv).map(|(a, b)| a * b / norm).sum::<f64>() / (dh as f64).sqrt()
                            };
                            logits.push(logit);
                            keys.push(key);
                        }
                    }
                    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
                    for (logit, &key) in logits.iter().zip(&keys) {
                        let weight = (logit - lse).exp();
                        let kv = vec_of(&vals, key);
                        for d in 0..dh as usize {
                            round_out[ri as usize][query as usize][d] += weight * kv[d];
                        }
                    }
                    round_lse[ri as usize][query as usize] = lse;
                }
            }
            for query in 0..t as usize {
                let max = (0..r as usize).map(|ri| round_lse[ri][query]).fold(f64::NEG_INFINITY, f64::max);
                let total = max + (0..r as usize).map(|ri| (round_lse[ri][query] - max).exp()).sum::<f64>().ln();
                for ri in 0..r as usize {
                    let weight = (round_lse[ri][query] - total).exp();
                    for d in 0..dh as usize {
                        out[(((bi * h + hi) * t) as usize + query) * dh as usize + d] +=
                            weight * round_out[ri][query][d];
                    }
                }
            }
        }
    }
    Tensor::from_slice(&out).view([b, h, t, dh])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn check_against_reference(t: i64, p: &LshParams, seed: i64) {
    tch::manual_seed(seed);
    let (b, h, dh) = (2, 2, 8);
    let qk = Tensor::randn([b, h, t, dh], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([b, h, t, dh], (Kind::Float, Device::Cpu));
    let rotations = random_rotations(seed as u64, dh, p.n_hashes, &p.hash, Device::Cpu);
    let got = lsh_attend(&qk, &v, &rotations, p, ForwardMode::eval(0));
    let want = reference(&qk, &v, &rotations, p);
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= TOLERANCE, "t={t} {p:?}: max |batched - reference| = {diff}");
}

#[test]
fn matches_reference_causal_several_rounds_and_chunks() {
    check_against_reference(32, &params(3, 4, 8, true, false), 1);
}

#[test]
fn matches_reference_non_causal() {
    check_against_reference(32, &params(2, 4, 8, false, false), 2);
}

#[test]
fn matches_reference_with_padding() {
    // 29 is not a multiple of the chunk: the batched code pads to 32 and masks.
    check_against_reference(29, &params(2, 6, 8, true, false), 3);
    check_against_reference(21, &params(3, 2, 8, false, false), 4);
}

#[test]
fn matches_reference_strict_causal() {
    check_against_reference(40, &params(3, 4, 8, true, true), 5);
    check_against_reference(37, &params(2, 2, 8, true, true), 6);
}

/// Dense attention with a shared, normalised query/key and the self-mask.
fn dense_shared_qk(qk: &Tensor, v: &Tensor, causal: bool) -> Tensor {
    let (_, _, t, dh) = qk.size4().unwrap();
    let logits = qk.matmul(&normalize(qk).transpose(-1, -2)) / (dh as f64).sqrt(); // (B, H, T, T)
    let eye = Tensor::eye(t, (Kind::Bool, Device::Cpu));
    let mut logits = logits.masked_fill(&eye, SELF_LOGIT);
    if causal {
        let future = Tensor::ones([t, t], (Kind::Bool, Device::Cpu)).triu(1);
        logits = logits.masked_fill(&future, MASKED_LOGIT);
    }
    logits.softmax(-1, Kind::Float).matmul(v)
}

#[test]
fn one_round_one_chunk_equals_dense_shared_qk_attention() {
    for causal in [true, false] {
        tch::manual_seed(7);
        let t = 24;
        let qk = Tensor::randn([2, 3, t, 8], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([2, 3, t, 8], (Kind::Float, Device::Cpu));
        let mut p = params(1, 2, t, causal, false);
        p.n_chunks_after = 0;
        let rotations = random_rotations(3, 8, p.n_hashes, &p.hash, Device::Cpu);
        let got = lsh_attend(&qk, &v, &rotations, &p, ForwardMode::eval(0));
        let diff = max_abs_diff(&got, &dense_shared_qk(&qk, &v, causal));
        assert!(diff <= TOLERANCE, "causal={causal}: max diff {diff}");
    }
}

#[test]
fn buckets_are_angular_and_per_round() {
    // Scaling a vector does not change its bucket; negating it moves it by NB/2.
    tch::manual_seed(8);
    let p = params(3, 8, 8, true, false);
    let qk = Tensor::randn([1, 1, 16, 8], (Kind::Float, Device::Cpu));
    let rotations = random_rotations(9, 8, p.n_hashes, &p.hash, Device::Cpu);
    let buckets = hash_buckets(&qk, &rotations, &p.hash);
    assert_eq!(buckets.size(), vec![1, 1, 3, 16]);
    assert!(buckets.equal(&hash_buckets(&(&qk * 3.5), &rotations, &p.hash)));
    let shifted = (hash_buckets(&-&qk, &rotations, &p.hash) + p.hash.n_buckets / 2).remainder(p.hash.n_buckets);
    assert!(buckets.equal(&shifted));
}

#[test]
fn same_seed_same_rotations_different_seed_different() {
    let p = params(2, 4, 8, true, false);
    let a = random_rotations(11, 8, p.n_hashes, &p.hash, Device::Cpu);
    assert!(a.equal(&random_rotations(11, 8, p.n_hashes, &p.hash, Device::Cpu)));
    assert!(!a.equal(&random_rotations(12, 8, p.n_hashes, &p.hash, Device::Cpu)));
}

#[test]
fn finite_difference_gradient_with_fixed_buckets() {
    // Buckets are piecewise constant in qk; a small perturbation keeps them, so the
    // attention is smooth there and its float64 gradient must match finite differences.
    tch::manual_seed(13);
    let p = params(2, 4, 4, true, false);
    let qk = Tensor::randn([1, 1, 12, 4], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let v = Tensor::randn([1, 1, 12, 4], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let rotations = random_rotations(14, 4, p.n_hashes, &p.hash, Device::Cpu).to_kind(Kind::Double);
    let probe = Tensor::randn([1, 1, 12, 4], (Kind::Double, Device::Cpu));
    let objective =
        |qk: &Tensor, v: &Tensor| (lsh_attend(qk, v, &rotations, &p, ForwardMode::eval(0)) * &probe).sum(Kind::Double);
    let loss = objective(&qk, &v);
    let grads = Tensor::run_backward(&[&loss], &[&qk, &v], false, false);
    let eps = 1e-6;
    let buckets = hash_buckets(&qk, &rotations, &p.hash);
    for (which, grad) in grads.iter().enumerate() {
        for index in [0i64, 5, 17, 30, 47] {
            let numeric = tch::no_grad(|| {
                let step = Tensor::zeros([48], (Kind::Double, Device::Cpu));
                let _ = step.get(index).fill_(eps);
                let step = step.view([1, 1, 12, 4]);
                let (plus, minus) = if which == 0 {
                    assert!(
                        hash_buckets(&(&qk + &step), &rotations, &p.hash).equal(&buckets),
                        "perturbation moved a bucket"
                    );
                    (objective(&(&qk + &step), &v), objective(&(&qk - &step), &v))
                } else {
                    (objective(&qk, &(&v + &step)), objective(&qk, &(&v - &step)))
                };
                (plus - minus).double_value(&[]) / (2.0 * eps)
            });
            let analytic = grad.flatten(0, -1).double_value(&[index]);
            assert!(
                (numeric - analytic).abs() <= 1e-6 * (1.0 + analytic.abs()),
                "d/d{which}[{index}]: {numeric} vs {analytic}"
            );
        }
    }
}

/// `qk` with one vector moved just across a bucket boundary of round 0: the vector whose
/// margin (the gap between its best and second-best rotated coordinate of [xR, -xR]) is
/// the `rank`-th smallest among the second half's positions (a causal query early in the
/// sequence sees too few keys for its bucket to matter), nudged along the difference of
/// the two rotation columns by 1.01 times what closes the gap.
///
/// # Shapes
/// `qk`: (1, 1, T, Dh); `rotations`: (Dh, R, NB/2); returns (1, 1, T, Dh).
fn nudged_across_a_boundary(qk: &Tensor, rotations: &Tensor, rank: i64) -> Tensor {
    let (t, dh) = (qk.size()[2], qk.size()[3]);
    let half = rotations.size()[3];
    let round0 = rotations.narrow(2, 0, 1).view([dh, half]); // (Dh, NB/2)
    let both = Tensor::cat(&[&round0, &-&round0], 1); // (Dh, NB)
    let projections = qk.get(0).get(0).matmul(&both); // (T, NB)
    let (top, at) = projections.topk(2, -1, true, true); // (T, 2) each
    let gaps = (top.select(1, 0) - top.select(1, 1)).narrow(0, t / 2, t / 2); // (T/2)
    let (sorted_gaps, order) = gaps.sort(0, false);
    let position = t / 2 + order.int64_value(&[rank]);
    let gap = sorted_gaps.double_value(&[rank]);
    let [best, second] = [0, 1].map(|i| at.get(position).int64_value(&[i]));
    // Moving x along (column second − column best) lowers the best and raises the second.
    let direction = both.select(1, second) - both.select(1, best); // (Dh)
    let step = direction.square().sum(Kind::Double).double_value(&[]);
    let nudge = Tensor::zeros_like(qk);
    nudge.get(0).get(0).get(position).copy_(&(direction * (1.01 * gap / step)));
    qk + nudge
}

/// Nudges that close a bucket margin are smaller than this (the inputs are unit normals).
const SMALL_NUDGE: f64 = 0.05;

#[test]
fn a_replay_under_the_bucket_tape_attends_with_the_forwards_buckets() {
    for seed in [10, 20, 30] {
        check_replay_under_the_tape(seed);
    }
}

fn check_replay_under_the_tape(seed: u64) {
    use reformer::model::attention::bucket_tape::BucketTape;
    use reformer::model::seeded_random;
    let p = params(2, 32, 8, true, false);
    let normal = |seed: u64| seeded_random::normal(seed, &[1, 1, 256, 16], Device::Cpu).to_kind(Kind::Double);
    let (qk, v) = (normal(seed), normal(seed + 1));
    let rotations = random_rotations(seed + 2, 16, p.n_hashes, &p.hash, Device::Cpu).to_kind(Kind::Double);
    let mode = ForwardMode::eval(4);
    let tape = BucketTape::default();
    let forward = tape.run(|| lsh_attend(&qk, &v, &rotations, &p, mode));

    // The construction: a vector nudged across a bucket boundary so that, hashed again, it
    // joins other keys (a move that keeps its place in the sorted order changes nothing).
    let constructed = (0..16).map(|rank| nudged_across_a_boundary(&qk, &rotations, rank)).find(|nudged| {
        let moved = hash_buckets(nudged, &rotations, &p.hash).ne_tensor(&hash_buckets(&qk, &rotations, &p.hash)).any();
        let small = (nudged - &qk).abs().max().double_value(&[]) < SMALL_NUDGE;
        let rehashed = lsh_attend(nudged, &v, &rotations, &p, mode);
        moved.int64_value(&[]) == 1 && small && max_abs_diff(&rehashed, &forward) > 1e-2
    });
    let nudged = constructed.unwrap_or_else(|| panic!("seed {seed}: no small nudge changes the attention pattern"));
    let replay = tape.run(|| lsh_attend(&nudged, &v, &rotations, &p, mode));
    let replay_gap = max_abs_diff(&replay, &forward);
    assert!(replay_gap < 1e-3, "seed {seed}: the replay under the tape moved by {replay_gap}");
    assert!(tape.bytes() > 0);
}
