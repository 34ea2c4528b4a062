//! The fused LSH kernel under every thread count and every instruction-set variant this
//! CPU runs: its outputs and gradients are the same bits (the backward's additions into
//! a row come in an order fixed by the sizes, the variants compute alike), and with two
//! threads both threads run blocks in the forward and the backward. One test, in a binary
//! of its own: the thread count is process-wide.

use reformer::cpu_paths::KernelIsa;
use reformer::model::attention::lsh_fused::{self, WindowRules};
use reformer::model::seeded_random;
use tch::{Device, Kind, Tensor};

/// A kernel call's inputs: (B, h, Tp, Dh) queries, keys and values, and each round's
/// sort order as a random permutation of the positions.
struct Call {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sticker: Tensor,
    buckets: Tensor,
    rules: WindowRules,
}

fn call(batch: i64, rounds: i64, t_pad: i64, rules: WindowRules, seed: u64) -> Call {
    let (heads, d_head) = (2, 16);
    let shape = [batch, heads, t_pad, d_head];
    let normal = |tag: u64| seeded_random::normal(seed * 10 + tag, &shape, Device::Cpu);
    let k = normal(2);
    let k = &k / k.norm_scalaropt_dim(2, [-1], true);
    tch::manual_seed(seed as i64);
    let orders: Vec<Tensor> = (0..batch * heads * rounds)
        .map(|i| Tensor::randperm(t_pad, (Kind::Int64, Device::Cpu)) + (i % rounds) * t_pad)
        .collect();
    let sticker = Tensor::cat(&orders, 0).view([batch, heads, rounds * t_pad]);
    let buckets = Tensor::randint(4, [batch, heads, rounds, t_pad], (Kind::Int64, Device::Cpu));
    Call { q: normal(1) * 2.0, k, v: normal(3), sticker, buckets, rules }
}

/// Outputs, log-sum-exps and the gradients of q, k and v of a fixed random weighting,
/// through the kernel with `isa`; and the distinct threads of its forward and backward.
fn run(c: &Call, isa: KernelIsa) -> (Vec<Tensor>, usize, usize) {
    let (q, k, v) = (c.q.set_requires_grad(true), c.k.set_requires_grad(true), c.v.set_requires_grad(true));
    let (out, lse) = lsh_fused::attend_rounds_with(isa, &q, &k, &v, &c.sticker, &c.buckets, c.rules);
    let forward_threads = lsh_fused::threads_in_last_call();
    let w_out = seeded_random::normal(91, &out.size(), Device::Cpu);
    let w_lse = seeded_random::normal(92, &lse.size(), Device::Cpu);
    let loss = (&out * w_out).sum(Kind::Float) + (&lse * w_lse).sum(Kind::Float);
    let grads = Tensor::run_backward(&[loss], &[&q, &k, &v], false, false);
    let backward_threads = lsh_fused::threads_in_last_call();
    let mut all = vec![out.detach(), lse.detach()];
    all.extend(grads);
    (all, forward_threads, backward_threads)
}

fn rules(chunk_len: i64, before: i64, after: i64, real_len: i64, causal: bool, strict: bool) -> WindowRules {
    WindowRules {
        chunk_len,
        n_chunks_before: before,
        n_chunks_after: after,
        real_len,
        causal: causal.into(),
        strict_causal: strict.into(),
        self_logit: -1e5,
        masked_logit: -1e9,
    }
}

#[test]
fn every_thread_count_and_variant_gives_the_same_bits_and_two_threads_both_work() {
    let calls = [
        ("one sequence, 3 rounds, one chunk back", call(1, 3, 128, rules(8, 1, 0, 123, true, false), 1)),
        ("two sequences, 2 back 1 ahead (4 colours)", call(2, 2, 88, rules(8, 2, 1, 88, false, false), 2)),
        ("strict causal", call(1, 2, 64, rules(8, 1, 0, 60, true, true), 3)),
    ];
    let variants: Vec<KernelIsa> = KernelIsa::ALL.into_iter().filter(|isa| isa.runs_here()).collect();
    for (label, c) in &calls {
        tch::set_num_threads(1);
        let (reference, _, _) = run(c, KernelIsa::Baseline);
        for threads in [1, 2, 3] {
            tch::set_num_threads(threads);
            for &isa in &variants {
                let (got, forward_threads, backward_threads) = run(c, isa);
                for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
                    assert!(
                        a.equal(b),
                        "{label}: tensor {i} with {threads} thread(s), {} differs from 1 thread, baseline by {:e}",
                        isa.name(),
                        (a - b).abs().max().double_value(&[])
                    );
                }
                if threads == 2 {
                    assert_eq!(forward_threads, 2, "{label}: the forward ran on {forward_threads} of 2 threads");
                    assert_eq!(backward_threads, 2, "{label}: the backward ran on {backward_threads} of 2 threads");
                }
            }
        }
    }
}
