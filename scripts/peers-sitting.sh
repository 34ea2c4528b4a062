#!/usr/bin/env bash
# Whole training steps side by side with the peers in one sitting: `reformer bench --suite
# steps` (dup, lm4k, lm16k; reversible and ordinary residuals), then the peers' same
# configurations (../shared/peers/run_all.py: reformer-pytorch and transformers'
# Reformer, each case in its own process), then reformer again; prints tokens/s of each
# and reformer's ratio to the faster peer (both reformer runs, reversible).
#
#   scripts/peers-sitting.sh PYTHON OUT_DIR [BINARY]
#
# PYTHON: an interpreter with torch 2.11, reformer-pytorch 1.4.4 and transformers 5.24.0
# (see ../shared/peers/README.md). Environment variables such as ONEDNN_MAX_CPU_ISA apply
# to both sides.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${1:?usage: peers-sitting.sh PYTHON OUT_DIR [BINARY]}
out=${2:?usage: peers-sitting.sh PYTHON OUT_DIR [BINARY]}
binary=${3:-$here/../target/release/reformer}
peers=$here/../../shared/peers
mkdir -p "$out"

"$binary" bench --device cpu --suite steps --steps 5 --json "$out/reformer-1.json" > "$out/reformer-1.log" 2>&1
"$python" "$peers/run_all.py" --impls lucidrains,hf --configs dup,lm4k,lm16k --out "$out/peers.json" \
  > "$out/peers.log" 2>&1
"$binary" bench --device cpu --suite steps --steps 5 --json "$out/reformer-2.json" > "$out/reformer-2.log" 2>&1

"$python" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
ours = {}
for run in ("reformer-1", "reformer-2"):
    for case in json.load(open(f"{out}/{run}.json"))["cases"]:
        ours.setdefault(case["label"], []).append(case["tokens_per_sec"])
peers = json.load(open(f"{out}/peers.json"))
rows = peers["results"] if isinstance(peers, dict) and "results" in peers else peers
theirs = {}
for r in rows:
    if r.get("tokens_per_s"):
        theirs.setdefault(r["config"], {})[r["impl"]] = r["tokens_per_s"]
print("| config | reformer (reversible), two runs | reformer (ordinary) | reformer-pytorch | transformers | ratio to the faster peer |")
print("| --- | --- | --- | --- | --- | --- |")
for config in ("dup", "lm4k", "lm16k"):
    rev, plain = ours.get(config, []), ours.get(f"{config}-plain", [])
    peer = theirs.get(config, {})
    best = max(peer.values()) if peer else float("nan")
    ratio = "-".join(f"{t / best:.2f}" for t in sorted(rev)) + "×"
    fmt = lambda xs: "-".join(f"{x:,.0f}" for x in sorted(xs))
    print(f"| {config} | {fmt(rev)} | {fmt(plain)} | {peer.get('lucidrains', float('nan')):,.0f} | "
          f"{peer.get('hf', float('nan')):,.0f} | {ratio} |")
PY
