#!/usr/bin/env bash
# The CUDA side of the project on a machine with an NVIDIA GPU, using a `reformer` binary
# built elsewhere against the same libtorch (2.11.0+cu130); no Rust toolchain needed.
#
#   scripts/gpu-check.sh [BINARY] [OUT_DIR]
#
# TORCH_LIB (default: the lib folder of the first PyTorch 2.11 found under
# /opt/torch/.venv or by python3) is put on LD_LIBRARY_PATH. Writes into OUT_DIR
# (default gpu-check-<time>): a log per check, bench JSON reports and the SVG figure.
# Exits non-zero at the first failing check. The last step measures the CPU paths over
# thread counts (scripts/cpu-thread-scaling.sh, with KERNEL_TIMING: the
# lsh-kernel-timing example built beside the binary). QUICK=1: only the float32
# training, resume and generation checks on CUDA, then the CPU thread scaling.
set -euo pipefail
binary=${1:-$(dirname "$0")/../target/release/reformer}
timing=${KERNEL_TIMING:-$(dirname "$binary")/examples/lsh-kernel-timing}
out=${2:-gpu-check-$(date +%s)}
mkdir -p "$out"

if [[ -z "${TORCH_LIB:-}" ]]; then
    for python in /opt/torch/.venv/bin/python python3; do
        if lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null); then
            TORCH_LIB=$lib
            break
        fi
    done
fi
export LD_LIBRARY_PATH="${TORCH_LIB:?set TORCH_LIB to the lib folder of PyTorch 2.11.0+cu130}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

step() { echo "== $1"; }
run() { local name=$1; shift; "$@" > "$out/$name.log" 2>&1 || { echo "FAILED: $*"; tail -20 "$out/$name.log"; exit 1; }; }

step "versions"
"$binary" --version | tee "$out/version.log"
grep -q "cuda available: true" "$out/version.log" || { echo "CUDA is not available to the binary"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.log" || true

cpu_thread_scaling() {
    step "CPU thread scaling: attention at 4K (LSH fused, local, full) and the LSH kernel alone at 16K"
    "$(dirname "$0")/cpu-thread-scaling.sh" "$binary" "$timing" "$out/cpu-threads" | tee "$out/cpu-threads.log"
}

step "training on CUDA: duplication preset, 200 steps, float32, bfloat16 and float16 (loss scaling); exact resume"
run train-f32 "$binary" train --device cuda --steps 200 --out "$out/dup-f32" --json
if [[ "${QUICK:-0}" == 1 ]]; then
    run train-resume-a "$binary" train --device cuda --steps 20 --out "$out/resume" --set train.eval_every=10
    run train-resume-b "$binary" train --device cuda --resume "$out/resume" --steps 40
    run generate-cached "$binary" generate --device cuda --checkpoint "$out/dup-f32" --prompt "$(printf '\001\002\003\004')" --greedy --max-new-tokens 100 --json
    tail -n 1 "$out/train-f32.log" "$out/train-resume-b.log" "$out/generate-cached.log"
    cpu_thread_scaling
    echo "quick checks passed; results in $out"
    exit 0
fi
run train-bf16 "$binary" train --device cuda --steps 200 --precision bf16 --out "$out/dup-bf16" --json
run train-f16 "$binary" train --device cuda --steps 200 --precision f16 --out "$out/dup-f16" --json
run train-resume-a "$binary" train --device cuda --steps 20 --out "$out/resume" --set train.eval_every=10
run train-resume-b "$binary" train --device cuda --resume "$out/resume" --steps 40
tail -n 1 "$out/train-f32.log" "$out/train-bf16.log" "$out/train-f16.log"

step "generation on CUDA: cached and uncached greedy continuations"
prompt=$(printf '\001\002\003\004')
run generate-cached "$binary" generate --device cuda --checkpoint "$out/dup-f32" --prompt "$prompt" --greedy --max-new-tokens 100 --json
run generate-uncached "$binary" generate --device cuda --checkpoint "$out/dup-f32" --prompt "$prompt" --greedy --max-new-tokens 100 --json --no-cache
run generate-bf16 "$binary" generate --device cuda --checkpoint "$out/dup-bf16" --prompt "$prompt" --greedy --max-new-tokens 100 --json
run generate-f16 "$binary" generate --device cuda --checkpoint "$out/dup-f16" --prompt "$prompt" --greedy --max-new-tokens 100 --json
tail -n 1 "$out/generate-cached.log" "$out/generate-uncached.log" "$out/generate-bf16.log" "$out/generate-f16.log"

step "data parallel on CUDA: one NCCL worker; two Gloo workers sharing the GPU"
port=$(( 20000 + RANDOM % 20000 ))
run dist-nccl env RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$binary" train --device cuda --dist-backend nccl --steps 20 --out "$out/dist-nccl" --json
run dist-gloo "$binary" train --device cuda --nproc 2 --dist-backend gloo --steps 20 \
    --set train.batch_size=4 --out "$out/dist-gloo" --json
tail -n 1 "$out/dist-nccl.log" "$out/dist-gloo.log"

step "bench at GPU sizes: attention to 128K, depth at 4096, feed-forward chunking"
run bench "$binary" bench --device cuda --full --suite all --json "$out/bench-cuda.json" --plot "$out/bench-cuda.svg"
cat "$out/bench.log"

step "bench per precision: the lm4k step, reconstruction error, short duplication runs; the enwik8-paper step at 64K in bf16"
run bench-precision "$binary" bench --device cuda --suite precision --json "$out/bench-precision-cuda.json"
run bench-paper-bf16 "$binary" bench --device cuda --preset enwik8-paper --steps 1 --precision bf16 --json "$out/bench-paper-bf16-cuda.json"
cat "$out/bench-precision.log" "$out/bench-paper-bf16.log"
cpu_thread_scaling
echo "all checks passed; results in $out"
