#!/usr/bin/env bash
# How the CPU paths scale with threads: one attention layer's forward + backward at 4,096
# tokens for LSH (fused kernel, 1-8 rounds), local and full attention (`reformer bench
# --suite attention`), and the fused LSH kernel alone at 16,384 tokens, 4 rounds, with its
# share of the large-GEMM rate at the same thread count (examples/lsh-kernel-timing), at
# 1, 2, 4, ... threads up to the machine's cores.
#
#   scripts/cpu-thread-scaling.sh [BINARY] [KERNEL_TIMING] [OUT_DIR]
#
# Defaults: target/release/reformer, target/release/examples/lsh-kernel-timing (built
# with `cargo build --release --example lsh-kernel-timing`), cpu-threads-<time>. Writes a
# JSON report and a kernel log per thread count and prints a table of µs per token.
set -euo pipefail
here=$(dirname "$0")
binary=${1:-$here/../target/release/reformer}
timing=${2:-$here/../target/release/examples/lsh-kernel-timing}
out=${3:-cpu-threads-$(date +%s)}
mkdir -p "$out"

cores=$(nproc)
counts=()
for n in 1 2 4 8 16 32 64; do
  if (( n <= cores )); then counts+=("$n"); fi
done

for n in "${counts[@]}"; do
  echo "== $n thread(s)"
  "$binary" bench --device cpu --suite attention --lengths 4096 --steps 5 --threads "$n" \
    --json "$out/attention-t$n.json" > "$out/attention-t$n.log" 2>&1
  OMP_NUM_THREADS=$n "$timing" kernel 16384 4 5 | tee "$out/kernel-t$n.log"
done

python3 - "$out" "${counts[@]}" <<'PY'
import json, re, sys
out, counts = sys.argv[1], sys.argv[2:]
rows = {}
for n in counts:
    report = json.load(open(f"{out}/attention-t{n}.json"))
    for case in report["cases"]:
        rows.setdefault(case["label"], {})[n] = case["us_per_token"]
    kernel = open(f"{out}/kernel-t{n}.log").read()
    forward, backward = map(float, re.findall(r"(?:forward|backward) ([\d.]+) ms", kernel))
    share = re.search(r"= (\d+)% of the large-GEMM rate", kernel).group(1)
    rows.setdefault("kernel 16K ms (fwd+bwd)", {})[n] = forward + backward
    rows.setdefault("kernel % of GEMM rate", {})[n] = float(share)
print("| case (µs/token at 4K) | " + " | ".join(f"{n} thr" for n in counts) + " | speed-up 1→max |")
print("| --- |" + " --- |" * (len(counts) + 1))
for label, by_count in rows.items():
    cells = " | ".join(f"{by_count[n]:.1f}" for n in counts)
    first, last = by_count[counts[0]], by_count[counts[-1]]
    speed_up = "" if "%" in label else f"{first / last:.2f}×"
    print(f"| {label} | {cells} | {speed_up} |")
PY
