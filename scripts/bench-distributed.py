#!/usr/bin/env python3
"""Throughput of data-parallel training with 1 and N Gloo workers on this machine.

Trains the enwik8-cpu preset for a fixed number of steps with one process (batch B) and
with `--nproc N` (batch B/N each, the same global batch and sequences), alternating the
two `--repeats` times, and prints the median tokens/s over the logged windows (the first
window, which pays for start-up, left out) and the median all-reduce time per step.

    scripts/bench-distributed.py --data ../shared/data/enwik8-head [--nproc 2] [--steps 40]
"""
import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "reformer"


def train(data, steps, batch, nproc, out):
    args = [str(BINARY), "train", "--task", "enwik8", "--data", data, "--preset", "enwik8-cpu",
            "--steps", str(steps), "--out", str(out), "--eval-bytes", "65536",
            "--set", f"train.batch_size={batch}", "--set", "train.log_every=10",
            "--set", "train.eval_every=100000", "--set", f"train.eval_batches={nproc}"]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "tokens_per_sec" in r][1:]
    return ([r["tokens_per_sec"] for r in windows], [r["all_reduce_secs_per_step"] for r in windows if "all_reduce_secs_per_step" in r],
            [r["loss"] for r in records if "loss" in r])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    single, multi, reduce_secs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(opts.repeats):
            rates, _, single_losses = train(opts.data, opts.steps, opts.batch, 1, Path(tmp) / f"one-{i}")
            single += rates
            rates, reduce, multi_losses = train(opts.data, opts.steps, opts.batch // opts.nproc, opts.nproc,
                                                Path(tmp) / f"many-{i}")
            multi += rates
            reduce_secs += reduce
            gap = max(abs(a - b) for a, b in zip(single_losses, multi_losses))
            print(f"repeat {i + 1}: 1 process {statistics.median(single[-len(rates):]):.0f} tok/s, "
                  f"{opts.nproc} processes {statistics.median(rates):.0f} tok/s, largest loss gap {gap:.2e}")
    one, many = statistics.median(single), statistics.median(multi)
    print(json.dumps({"nproc": opts.nproc, "global_batch": opts.batch, "steps": opts.steps,
                      "tokens_per_sec_1": one, f"tokens_per_sec_{opts.nproc}": many, "ratio": many / one,
                      "all_reduce_ms_per_step": 1e3 * statistics.median(reduce_secs)}))


if __name__ == "__main__":
    main()
