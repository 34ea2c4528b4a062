#!/usr/bin/env bash
# Writes tests/fixtures/runs: three small run folders as a release writes them, and what
# that release computes with them (expected.json), so that later releases are tested to
# load them and compute the same. Run with the binary of the release to freeze:
#
#   bash scripts/make-run-fixtures.sh target/release/reformer
#
# lsh-default: an LSH + local model trained 3 steps on duplication, its config.json
#              rewritten with "n_buckets": null as releases before factorised hashing wrote it.
# imported:    tests/fixtures/hf-reformer/lsh-only through `reformer import` (the released
#              form: wrap-around windows, unscaled logits, ReLU, token offset 2).
# strict:      an LSH model with the strict causal rule, trained 3 steps on a text.
set -euo pipefail

bin=$(realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/tests/fixtures/runs"
rm -rf "$out"
mkdir -p "$out"
cd "$out"

# A fixed text for the text task and for scoring (no data file of the repository).
python3 - <<'EOF'
words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex bold jumping zebras".split()
text, state = [], 12345
for _ in range(900):
    state = (state * 1103515245 + 12345) % 2**31
    text.append(words[state % len(words)])
open("text.txt", "w").write(" ".join(text) + "\n")
EOF

tiny='"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_seq_len": 128,
      "positional": {"kind": "axial", "shape": [8, 16], "dims": [16, 16]}'
cat > lsh-default.json <<EOF
{"model": {$tiny, "attention": ["lsh", "local"], "lsh": {"n_hashes": 2, "chunk_len": 16}, "local": {"chunk_len": 16}},
 "train": {"batch_size": 2, "steps": 3, "lr": 3e-3, "warmup_steps": 1, "log_every": 1, "eval_every": 3, "eval_batches": 1,
           "duplication": {"n_symbols": 16, "copy_len": 63}, "seq_len": 128}}
EOF
cat > strict.json <<EOF
{"model": {$tiny, "attention": ["lsh"], "lsh": {"n_hashes": 2, "chunk_len": 16, "strict_causal": true}},
 "train": {"batch_size": 2, "steps": 3, "lr": 3e-3, "warmup_steps": 1, "log_every": 1, "eval_every": 3, "eval_batches": 1, "seq_len": 128}}
EOF

"$bin" train --config lsh-default.json --out lsh-default --device cpu --seed 5 >/dev/null 2>&1
"$bin" train --config strict.json --task text --data text.txt --out strict --device cpu --seed 6 >/dev/null 2>&1
"$bin" import --from "$root/tests/fixtures/hf-reformer/lsh-only" --out imported >/dev/null 2>&1
rm lsh-default.json strict.json
python3 - <<'EOF'
import json
path = "lsh-default/config.json"
cfg = json.load(open(path))
cfg["model"]["lsh"]["n_buckets"] = None
cfg["model"]["lsh"].pop("bucket_factors", None)
json.dump(cfg, open(path, "w"), indent=2)
EOF
# Only what loading and scoring need: the weights, not the optimizer's moments.
find . -name optimizer.safetensors -delete
find . -name metrics.jsonl -delete
find . -name .lock -delete
find . -name curve.svg -delete

score() { "$bin" eval --checkpoint "$@" --eval-bytes 8192 --device cpu --json 2>/dev/null; }
sample() { "$bin" generate --checkpoint "$1" --prompt "the quick" --max-new-tokens 24 --greedy --device cpu --seed 1 --json 2>/dev/null; }
python3 - "$(score lsh-default --task duplication)" \
    "$(score strict --task text --data text.txt --split all --seq-len 128)" \
    "$(score imported --task text --data text.txt --split all --seq-len 128)" \
    "$(sample strict)" "$(sample imported)" <<'EOF'
import json, sys
expected = {
    "eval": {"lsh-default": json.loads(sys.argv[1]), "strict": json.loads(sys.argv[2]), "imported": json.loads(sys.argv[3])},
    "generate": {"strict": json.loads(sys.argv[4])["samples"][0], "imported": json.loads(sys.argv[5])["samples"][0]},
}
json.dump(expected, open("expected.json", "w"), indent=2)
EOF
du -sh "$out"
