#!/usr/bin/env bash
# A small sweep of the enwik8-cpu preset at equal wall-clock: each variant trains for the
# same minutes (train.minutes: the cosine decays over the budget, whatever the variant's
# speed), alone on the machine, one after another; then its best checkpoint is scored on
# the whole validation split and on English text it never saw (the first 262,144 bytes
# of tiny-shakespeare). Prints a table and writes OUT_DIR/sweep.tsv.
#
#   scripts/enwik8-sweep.sh OUT_DIR MINUTES VARIANT ...
#
# VARIANT is a name from the list below (a label and its --set overrides of enwik8-cpu).
# Data: ../shared/data (ENWIK8 and PROSE override the two files). SEED=N trains with
# --seed N (a second seed of a variant goes to its own OUT_DIR).
set -euo pipefail
out=$1
minutes=$2
shift 2
reformer=${REFORMER:-target/release/reformer}
enwik8=${ENWIK8:-../shared/data/enwik8-head}
prose=${PROSE:-../shared/data/tiny-shakespeare.txt}

# Windows of 4,096 bytes, one per batch (the preset's 4,096 tokens per step).
ctx4k="train.seq_len=4096 model.max_seq_len=4096 train.batch_size=1 model.positional.shape=[64,64]"
declare -A variants=(
    [preset]=""
    [before-retune]="train.lr=1e-3 train.batch_size=8"
    [lr2e-3]="train.lr=2e-3 train.batch_size=8"
    [lr3e-3]="train.lr=3e-3 train.batch_size=8"
    [lr5e-3]="train.lr=5e-3 train.batch_size=8"
    [lr3e-3-ctx512]="train.lr=3e-3 train.seq_len=512 train.batch_size=16"
    [lr3e-3-ctx256]="train.lr=3e-3 train.seq_len=256 train.batch_size=32"
    [lr3e-3-batch4]="train.lr=3e-3 train.batch_size=4"
    [lr3e-3-batch2]="train.lr=3e-3 train.batch_size=2"
    [lr3e-3-6layers]="train.lr=3e-3 train.batch_size=8 model.n_layers=6 model.attention=[\"local\",\"lsh\"]"
    [lr3e-3-d384]="train.lr=3e-3 train.batch_size=8 model.d_model=384 model.d_ff=1536 model.positional.dims=[192,192]"
    [lr3e-3-bf16]="train.lr=3e-3 train.batch_size=8 train.precision=bf16"
    [lr3e-3-strict]="train.lr=3e-3 train.batch_size=8 model.lsh.window=strict"
    [lr3e-3-full]="train.lr=3e-3 train.batch_size=8 model.attention=[\"full\"]"
    [lr3e-3-local]="train.lr=3e-3 train.batch_size=8 model.attention=[\"local\"]"
    [full-1k]="model.attention=[\"full\"]"
    [local-1k]="model.attention=[\"local\"]"
    [lsh-1k]="model.attention=[\"lsh\"]"
    [mix-4k]="$ctx4k"
    [full-4k]="$ctx4k model.attention=[\"full\"]"
    [local-4k]="$ctx4k model.attention=[\"local\"]"
    [lsh-4k]="$ctx4k model.attention=[\"lsh\"]"
    [local-lr5e-3]="model.attention=[\"local\"] train.lr=5e-3"
    [local-6layers]="model.attention=[\"local\"] model.n_layers=6"
    [local-d384]="model.attention=[\"local\"] model.d_model=384 model.d_ff=1536 model.positional.dims=[192,192]"
    [local-d192]="model.attention=[\"local\"] model.d_model=192 model.d_ff=768 model.positional.dims=[96,96]"
    [local-d128]="model.attention=[\"local\"] model.d_model=128 model.d_ff=512 model.positional.dims=[64,64]"
    [mix-d128]="model.d_model=128 model.d_ff=512 model.positional.dims=[64,64]"
    [local-bf16]="model.attention=[\"local\"] train.precision=bf16"
    [mix-reversible]="model.execution.reversible=true"
)

mkdir -p "$out"
[[ -f $out/sweep.tsv ]] || printf 'variant\tsettings\tsteps\ttokens_per_sec\tvalid_bpc\tprose_bpc\n' >"$out/sweep.tsv"
for name in "$@"; do
    [[ -v variants[$name] ]] || { echo "unknown variant '$name': ${!variants[*]}" >&2; exit 2; }
    # float32 unless the variant says otherwise (the preset's `auto` would make a
    # variant's arithmetic depend on the CPU).
    sets=(--set "train.minutes=$minutes" --set "train.steps=1000000" --set "train.precision=f32")
    [[ -n ${SEED:-} ]] && sets+=(--seed "$SEED")
    for s in ${variants[$name]}; do sets+=(--set "$s"); done
    run=$out/$name
    echo "== $run: ${variants[$name]:-enwik8-cpu as shipped}, $minutes minutes" >&2
    "$reformer" train --task enwik8 --data "$enwik8" --preset enwik8-cpu "${sets[@]}" \
        --out "$run" --json >"$run.json" 2>"$run.log"
    valid=$("$reformer" eval --checkpoint "$run" --split valid --json 2>/dev/null | jq ".results[0].bpc")
    prose_bpc=$("$reformer" eval --checkpoint "$run" --task text --data "$prose" --split all --eval-bytes 262144 --json 2>/dev/null | jq ".results[0].bpc")
    steps=$(jq .steps "$run.json")
    rate=$(jq '.tokens_per_sec | round' "$run.json")
    printf '%s\t%s\t%s\t%s\t%.4f\t%.4f\n' "$name" "${variants[$name]:-(as shipped)}" "$steps" "$rate" "$valid" "$prose_bpc" >>"$out/sweep.tsv"
done
column -t -s $'\t' "$out/sweep.tsv"
