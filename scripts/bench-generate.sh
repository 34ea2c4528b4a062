#!/usr/bin/env bash
# Tokens per second of `reformer generate` with and without the decoding cache at
# several context lengths: a prompt of N bytes from a text file, greedy decoding.
#
#   scripts/bench-generate.sh RUN_DIR TEXT_FILE [CONTEXTS] [CACHED_TOKENS] [UNCACHED_TOKENS]
#
# CONTEXTS is a comma-separated list of prompt lengths (default 512,4096,16320); the
# model's max_seq_len must leave room for the new tokens. Prints one row per context.
set -euo pipefail
run=${1:?usage: $0 RUN_DIR TEXT_FILE [CONTEXTS] [CACHED_TOKENS] [UNCACHED_TOKENS]}
text=${2:?usage: $0 RUN_DIR TEXT_FILE [CONTEXTS] [CACHED_TOKENS] [UNCACHED_TOKENS]}
contexts=${3:-512,4096,16320}
cached_tokens=${4:-64}
uncached_tokens=${5:-8}
binary=${REFORMER:-$(dirname "$0")/../target/release/reformer}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

rate() { python3 -c 'import json, sys; r = json.load(sys.stdin); print("%.2f %.3f" % (r["decode_tokens_per_sec"], r["time_to_first_token_secs"]))'; }

printf '%8s  %16s  %16s  %9s  %10s\n' context "cached tok/s" "no-cache tok/s" speed-up "prefill s"
for n in ${contexts//,/ }; do
    # A prompt from the middle of the file, so that it is ordinary text.
    head -c $((1000000 + n)) "$text" | tail -c "$n" > "$scratch/prompt"
    common=(generate --device cpu --checkpoint "$run" --prompt-file "$scratch/prompt" --greedy --json)
    read -r cached prefill < <("$binary" "${common[@]}" --max-new-tokens "$cached_tokens" | rate)
    read -r uncached _ < <("$binary" "${common[@]}" --max-new-tokens "$uncached_tokens" --no-cache | rate)
    speedup=$(python3 -c "print(f'{$cached / $uncached:.1f}x')")
    printf '%8s  %16s  %16s  %9s  %10s\n' "$n" "$cached" "$uncached" "$speedup" "$prefill"
done
