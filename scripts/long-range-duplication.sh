#!/usr/bin/env bash
# Long-range duplication at equal wall-clock: each run trains one of the
# duplication-{1k,4k,16k} presets with one attention pattern until its validation
# second-copy accuracy reaches 99% or its time limit, alone on the machine, one after
# another; then one figure per length overlays the runs.
#
#   scripts/long-range-duplication.sh OUT_DIR LENGTH:PATTERN:MINUTES[:FROM] ...
#
# LENGTH: 1k, 4k, 16k or 64k. PATTERN: lsh1, lsh2, lsh4 (LSH attention, that many hash
# rounds), full, local (chunks of 128 and one chunk back: a window of 256 tokens).
# FROM: an earlier run of OUT_DIR (e.g. 4k-lsh2) to continue from (a length curriculum:
# `train --init-from`, its positions grown to the longer preset's); the run is named
# LENGTH-PATTERN-from-FROM, and its minutes add to FROM's.
# Example: scripts/long-range-duplication.sh runs/dup 4k:lsh2:20 4k:full:20 4k:local:5 16k:lsh2:20:4k-lsh2
set -euo pipefail
out=$1
shift
reformer=${REFORMER:-target/release/reformer}
mkdir -p "$out"
for spec in "$@"; do
    IFS=: read -r length pattern minutes from <<<"$spec"
    case $pattern in
        lsh[0-9]*) sets=(--set "model.lsh.n_hashes=${pattern#lsh}") ;;
        full) sets=(--set 'model.attention=["full"]') ;;
        local) sets=(--set 'model.attention=["local"]') ;;
        *) echo "unknown pattern '$pattern': lsh1, lsh2, lsh4, full or local" >&2; exit 2 ;;
    esac
    run=$out/$length-$pattern
    if [[ -n $from ]]; then
        sets+=(--init-from "$out/$from")
        run=$run-from-$from
    fi
    echo "== $run: duplication-$length, $pattern, up to $minutes minutes${from:+, from $from}" >&2
    "$reformer" train --preset "duplication-$length" "${sets[@]}" --time-limit "$minutes" --target 0.99 \
        --out "$run" --json >"$run.json" 2>"$run.log"
done
for length in 1k 4k 16k 64k; do
    runs=("$out"/"$length"-*/)
    [[ -d ${runs[0]} ]] || continue
    labels=$(for r in "${runs[@]}"; do basename "$r"; done | paste -sd, -)
    "$reformer" plot "${runs[@]}" --labels "$labels" --out "$out/duplication-$length.svg"
done
