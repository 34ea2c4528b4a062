//! Times LSH attention's core (hash, sort, chunked attention, rounds combined), forward
//! and backward, through the fused kernel and the batched path, alternately in one
//! process: `cargo run --release --example lsh-kernel-timing -- T ROUNDS [STEPS]`
//! (one sequence, 4 heads of 64, chunks of 64, causal). Prints the median milliseconds
//! of each path and their ratio.

use std::time::Instant;

use reformer::model::attention::hashing::{random_rotations, HashSpec};
use reformer::model::attention::lsh::{lsh_attend, LshParams};
use reformer::model::ForwardMode;
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<i64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (t, rounds, steps) = (args[0], args[1], *args.get(2).unwrap_or(&5));
    let p = LshParams {
        n_hashes: rounds,
        hash: HashSpec { n_buckets: 2 * t / 64, factors: vec![] },
        chunk_len: 64,
        ..Default::default()
    };
    let qk = Tensor::randn([1, 4, t, 64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let v = Tensor::randn([1, 4, t, 64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let rotations = random_rotations(1, 64, rounds, &p.hash, Device::Cpu);
    let mut times = [Vec::new(), Vec::new()];
    for step in 0..=steps {
        for (i, fused) in [true, false].into_iter().enumerate() {
            if std::env::var("ONLY_FUSED").is_ok() && !fused {
                times[i].push(1.0);
                continue;
            }
            let p = LshParams { fused, ..p.clone() };
            let started = Instant::now();
            let out = lsh_attend(&qk, &v, &rotations, &p, ForwardMode::train(step as u64));
            out.sum(Kind::Float).backward();
            if step > 0 {
                times[i].push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let median = |x: &mut Vec<f64>| {
        x.sort_by(|a, b| a.partial_cmp(b).unwrap());
        x[x.len() / 2]
    };
    let (fused, batched) = (median(&mut times[0]), median(&mut times[1]));
    println!(
        "T {t} rounds {rounds}: fused {fused:.1} ms, batched {batched:.1} ms, batched/fused {:.2}",
        batched / fused
    );
}
