#!/usr/bin/env python3
"""The duplication task as generation: give a trained duplication checkpoint the
prompt `0 w 0` and let it write the second copy greedily; report the fraction of the
copy's symbols it reproduces, with and without the decoding cache.

    scripts/duplication-demo.py RUN_DIR [--samples N] [--seed S]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder of `reformer train --task duplication`")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--binary", default=os.path.join(HERE, "..", "target", "release", "reformer"))
    args = ap.parse_args()

    with open(os.path.join(args.run, "config.json")) as f:
        config = json.load(f)
    n_symbols = config["train"]["duplication"]["n_symbols"]
    copy_len = config["train"]["duplication"]["copy_len"]
    rng = random.Random(args.seed)
    correct = {"cached": 0, "no-cache": 0}
    seconds = {"cached": 0.0, "no-cache": 0.0}
    with tempfile.TemporaryDirectory() as scratch:
        prompt_path = os.path.join(scratch, "prompt")
        for _ in range(args.samples):
            w = bytes(rng.randrange(1, n_symbols) for _ in range(copy_len))
            with open(prompt_path, "wb") as f:
                f.write(b"\0" + w + b"\0")
            for mode, extra in (("cached", []), ("no-cache", ["--no-cache"])):
                out = subprocess.run(
                    [args.binary, "generate", "--device", "cpu", "--checkpoint", args.run, "--prompt-file",
                     prompt_path, "--max-new-tokens", str(copy_len), "--greedy", "--json", *extra],
                    check=True, capture_output=True,
                )
                result = json.loads(out.stdout)
                copy = result["samples"][0].encode()
                correct[mode] += sum(a == b for a, b in zip(copy, w))
                seconds[mode] += copy_len / result["tokens_per_sec"]
    total = args.samples * copy_len
    for mode in correct:
        print(f"{mode:>8}: {correct[mode]}/{total} symbols of the second copy correct "
              f"({100 * correct[mode] / total:.2f}%), {total / seconds[mode]:.0f} tokens/s")


if __name__ == "__main__":
    sys.exit(main())
