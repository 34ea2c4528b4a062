//! Times LSH attention on one sequence of 4 heads of 64, chunks of 64, causal:
//!
//! `cargo run --release --example lsh-kernel-timing -- compare T ROUNDS [STEPS]`: the
//! whole of `lsh_attend` (hash, sort, chunked attention, rounds combined), forward and
//! backward, through the fused kernel and the batched path, alternately in one process;
//! prints the median milliseconds of each and their ratio.
//!
//! `cargo run --release --example lsh-kernel-timing -- kernel T ROUNDS [STEPS]`: the fused
//! kernel alone (forward, backward) on buckets drawn at random, and its rate: the FLOPs
//! of its block matmuls (2 in the forward, 5 in the backward, each 2·C·W·Dh per block)
//! against this machine's float32 large-GEMM rate (`reformer bench`'s figure).
//!
//! `cargo run --release --example lsh-kernel-timing -- scratch T ROUNDS`: the memory the
//! kernel's backward takes beyond its outputs, on one sequence of one head (a sliced
//! attention call, where fewer sequences than threads once meant per-thread gradient
//! copies): the growth of the peak resident set during the backward, less the three
//! gradients it returns. Run it with OMP_NUM_THREADS=1 and =2 to see whether it depends
//! on the thread count.

use std::time::Instant;

use reformer::allocator::{self, ConfString};
use reformer::bench::matmul_flops;
use reformer::model::attention::hashing::{random_rotations, HashSpec};
use reformer::model::attention::lsh::{lsh_attend, normalize, sort_slots, LshParams};
use reformer::model::attention::lsh_fused::{self, WindowRules};
use reformer::model::ForwardMode;
use tch::{Device, Kind, Tensor};

/// The binary's allocator and its settings (see `reformer::allocator`): timings depend on it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[no_mangle]
#[used]
#[allow(non_upper_case_globals)]
static malloc_conf: ConfString = allocator::MALLOC_CONF;

const HEADS: i64 = 4;
const D_HEAD: i64 = 64;
const CHUNK: i64 = 64;

fn median(mut x: Vec<f64>) -> f64 {
    x.sort_by(|a, b| a.partial_cmp(b).unwrap());
    x[x.len() / 2]
}

fn milliseconds_of(f: impl FnOnce()) -> f64 {
    let started = Instant::now();
    f();
    started.elapsed().as_secs_f64() * 1e3
}

fn params(t: i64, rounds: i64) -> LshParams {
    LshParams {
        n_hashes: rounds,
        hash: HashSpec { n_buckets: 2 * t / CHUNK, factors: vec![] },
        chunk_len: CHUNK,
        ..Default::default()
    }
}

fn compare(t: i64, rounds: i64, steps: usize) {
    let p = params(t, rounds);
    let qk = Tensor::randn([1, HEADS, t, D_HEAD], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let v = Tensor::randn([1, HEADS, t, D_HEAD], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let rotations = random_rotations(1, D_HEAD, rounds, &p.hash, Device::Cpu);
    let mut times = [Vec::new(), Vec::new()];
    for step in 0..=steps {
        for (i, fused) in [true, false].into_iter().enumerate() {
            let p = LshParams { fused, ..p.clone() };
            let ms = milliseconds_of(|| {
                lsh_attend(&qk, &v, &rotations, &p, ForwardMode::train(step as u64)).sum(Kind::Float).backward();
            });
            if step > 0 {
                times[i].push(ms);
            }
        }
    }
    let [fused, batched] = times.map(median);
    println!(
        "T {t} rounds {rounds}: fused {fused:.1} ms, batched {batched:.1} ms, batched/fused {:.2}",
        batched / fused
    );
}

fn kernel(t: i64, rounds: i64, steps: usize) {
    let p = params(t, rounds);
    let options = (Kind::Float, Device::Cpu);
    let buckets = Tensor::randint(p.hash.n_buckets, [1, HEADS, rounds, t], (Kind::Int64, Device::Cpu)); // (1, H, R, T)
    let sticker = sort_slots(&buckets, p.hash.n_buckets); // (1, H, R·T)
    let qk = Tensor::randn([1, HEADS, t, D_HEAD], options).set_requires_grad(true);
    let v = Tensor::randn([1, HEADS, t, D_HEAD], options).set_requires_grad(true);
    let (mut forward, mut backward) = (Vec::new(), Vec::new());
    for step in 0..=steps {
        let (q, k) = ((&qk * (D_HEAD as f64).powf(-0.5)).detach().set_requires_grad(true), normalize(&qk).detach());
        let k = k.set_requires_grad(true);
        let mut outputs = None;
        let f = milliseconds_of(|| {
            outputs = Some(lsh_fused::attend_rounds(&q, &k, &v, &sticker, &buckets, WindowRules::new(&p, t)));
        });
        let (out, lse) = outputs.unwrap();
        let loss = out.sum(Kind::Float) + lse.sum(Kind::Float);
        let b = milliseconds_of(|| loss.backward());
        if step > 0 {
            forward.push(f);
            backward.push(b);
        }
    }
    let (forward, backward) = (median(forward), median(backward));
    let window = (p.n_chunks_before + 1 + p.n_chunks_after) * CHUNK;
    let per_matmul = 2.0 * (HEADS * rounds * t * window * D_HEAD) as f64;
    let rate = 7.0 * per_matmul / ((forward + backward) / 1e3);
    let gemm = matmul_flops(Device::Cpu);
    println!(
        "T {t} rounds {rounds}: kernel forward {forward:.1} ms ({:.0} GFLOP/s), backward {backward:.1} ms ({:.0} GFLOP/s); \
         together {:.0} GFLOP/s = {:.0}% of the large-GEMM rate {:.0} GFLOP/s",
        2.0 * per_matmul / (forward / 1e3) / 1e9,
        5.0 * per_matmul / (backward / 1e3) / 1e9,
        rate / 1e9,
        100.0 * rate / gemm,
        gemm / 1e9
    );
}

/// A line of /proc/self/status in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 1024.0
}

fn scratch(t: i64, rounds: i64) {
    let p = params(t, rounds);
    let buckets = Tensor::randint(p.hash.n_buckets, [1, 1, rounds, t], (Kind::Int64, Device::Cpu)); // (1, 1, R, T)
    let sticker = sort_slots(&buckets, p.hash.n_buckets); // (1, 1, R·T)
    let qk = Tensor::randn([1, 1, t, D_HEAD], (Kind::Float, Device::Cpu));
    let q = (&qk * (D_HEAD as f64).powf(-0.5)).set_requires_grad(true);
    let k = normalize(&qk).set_requires_grad(true);
    let v = Tensor::randn([1, 1, t, D_HEAD], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let (out, lse) = lsh_fused::attend_rounds(&q, &k, &v, &sticker, &buckets, WindowRules::new(&p, t));
    let loss = out.sum(Kind::Float) + lse.sum(Kind::Float);
    // Resets the peak to the current resident set (Linux 4.0+).
    std::fs::write("/proc/self/clear_refs", "5").expect("cannot reset the peak resident set");
    let before = status_bytes("VmRSS:");
    let grads = Tensor::run_backward(&[loss], &[&q, &k, &v], false, false);
    let growth = status_bytes("VmHWM:") - before;
    let returned: f64 = grads.iter().map(|g| (g.numel() * 4) as f64).sum();
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    println!(
        "T {t} rounds {rounds}, one sequence, {} thread(s): backward peak growth {:.1} MiB, of which the returned \
         gradients {:.1} MiB: {:.1} MiB beyond them",
        tch::get_num_threads(),
        mib(growth),
        mib(returned),
        mib(growth - returned)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: i64| args.get(i).map_or(default, |a| a.parse().expect("a number"));
    let (t, rounds, steps) = (number(1, 4096), number(2, 4), number(3, 5) as usize);
    match args.first().map(String::as_str) {
        Some("compare") => compare(t, rounds, steps),
        Some("kernel") => kernel(t, rounds, steps),
        Some("scratch") => scratch(t, rounds),
        _ => eprintln!("usage: lsh-kernel-timing compare|kernel|scratch T ROUNDS [STEPS]"),
    }
}
