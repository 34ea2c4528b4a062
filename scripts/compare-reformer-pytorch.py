#!/usr/bin/env python3
"""Train reformer-pytorch's ReformerLM (pip install reformer-pytorch==1.4.4) on a byte
file for a fixed wall-clock budget, with the shape of the `enwik8-cpu` preset, and score
it the way `reformer eval` scores a run: bits per byte over the whole validation and
test splits (the last 10% of the file, halved), in non-overlapping windows.

    python scripts/compare-reformer-pytorch.py --data FILE --minutes 30 --out metrics.jsonl

Each validation point of the curve (every --eval-every-s seconds, 16 fixed windows) and
the final scores are written as JSON lines. The learning rate warms up linearly, then
decays along a cosine to a tenth over the time budget (the step count is not known in
advance); AdamW with betas (0.9, 0.98), gradient norm clipped at 1: the settings of
`reformer train`'s defaults.
"""
import argparse
import json
import math
import random
import time

FINAL_LR_FRACTION = 0.1


def split_points(n):
    return n * 90 // 100, n * 95 // 100


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--reversible", action="store_true", help="reversible layers (default: ordinary residuals)")
    ap.add_argument("--eval-every-s", type=float, default=180.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from reformer_pytorch import ReformerLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = open(args.data, "rb").read()
    valid_start, test_start = split_points(len(data))
    splits = {
        "train": torch.tensor(list(data[:valid_start]), dtype=torch.long),
        "valid": torch.tensor(list(data[valid_start:test_start]), dtype=torch.long),
        "test": torch.tensor(list(data[test_start:]), dtype=torch.long),
    }
    t = args.seq_len
    model = ReformerLM(
        num_tokens=256, dim=256, depth=4, max_seq_len=t, heads=4, dim_head=64, bucket_size=64, n_hashes=2,
        ff_mult=4, causal=True, lsh_dropout=0.0, ff_dropout=0.0, post_attn_dropout=0.0, layer_dropout=0.0,
        full_attn_thres=0, reverse_thres=0 if args.reversible else 10 * t,
        axial_position_emb=True, axial_position_shape=(32, t // 32),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
    rng = random.Random(args.seed)

    def windows(split, starts):
        rows = torch.stack([splits[split][s:s + t + 1] for s in starts])  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]

    def bpc(split, starts):
        model.eval()
        nll, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(starts), args.batch):
                x, y = windows(split, starts[i:i + args.batch])
                logits = model(x)
                nll += F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1), reduction="sum").item()
                count += y.numel()
        model.train()
        return nll / count / math.log(2)

    curve_rng = random.Random(1234)
    curve_starts = [curve_rng.randrange(0, len(splits["valid"]) - t - 1) for _ in range(16)]
    budget = args.minutes * 60
    out = open(args.out, "w")
    started = time.perf_counter()
    next_eval, step = args.eval_every_s, 0
    while True:
        elapsed = time.perf_counter() - started
        if elapsed >= budget:
            break
        warm = min(1.0, (step + 1) / args.warmup)
        decay = FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm * decay
        x, y = windows("train", [rng.randrange(0, len(splits["train"]) - t - 1) for _ in range(args.batch)])
        loss = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if time.perf_counter() - started >= next_eval:
            point = {"step": step, "elapsed": time.perf_counter() - started, "loss": loss.item(),
                     "valid_bpc_16_windows": bpc("valid", curve_starts)}
            print(json.dumps(point), flush=True)
            out.write(json.dumps(point) + "\n")
            out.flush()
            next_eval += args.eval_every_s
    train_secs = time.perf_counter() - started
    final = {"steps": step, "train_secs": train_secs, "tokens_per_sec": step * args.batch * t / train_secs,
             "parameters": sum(p.numel() for p in model.parameters())}
    for split in ("valid", "test"):
        starts = list(range(0, len(splits[split]) - t - 1 + 1, t))
        final[f"{split}_bpc"] = bpc(split, starts)
    print(json.dumps(final), flush=True)
    out.write(json.dumps(final) + "\n")


if __name__ == "__main__":
    main()
