#!/usr/bin/env python3
"""Chunked LSH attention's core two ways, forward and backward, on the CPU: the batched
matmul, mask, softmax path that src/model/attention/lsh.rs takes, and libtorch's fused
flash attention (`_scaled_dot_product_flash_attention_for_cpu`, which also returns the
log-sum-exp the rounds are combined with), one sorted chunk per batch entry, its window as
the keys, causal and self masks as one additive float mask built from positions. The
masks are built inside each timed call. Shapes: the LSH layers of the bench's lm4k
(4 heads x 2 rounds x 64 chunks of 64, window 128, d_head 64) and lm16k, and of the
enwik8 model at 4K (8 heads x 4 rounds x 16 chunks of 256, window 512, d_head 128).
Positions are random, so some rows see no key at all; the outputs differ only there
(additive against replacing masks), which real LSH windows never have (a query always
sees itself).

    python scripts/lsh-fused-attention-probe.py   # torch 2.11, 2 threads; medians of 5
"""
import time, torch
torch.set_num_threads(2)
torch.manual_seed(0)
def run(N, C, W, D, reps=5):
    q = torch.randn(N, C, D, requires_grad=True)
    k = torch.randn(N, W, D, requires_grad=True)
    v = torch.randn(N, W, D, requires_grad=True)
    qpos = torch.randint(0, 4096, (N, C, 1)); kpos = torch.randint(0, 4096, (N, 1, W))
    hidden = kpos > qpos                       # (N, C, W) causal on original positions
    same = kpos == qpos
    def batched():
        hidden = kpos > qpos
        same = kpos == qpos
        logits = q @ k.transpose(-1, -2) * D ** -0.5
        logits = logits.masked_fill(same, -1e5).masked_fill(hidden, -1e9)
        p = logits.softmax(-1)
        lse = logits.amax(-1, keepdim=True) - p.amax(-1, keepdim=True).log()
        return p @ v, lse
    def fused():
        hidden = kpos > qpos
        same = kpos == qpos
        mask = torch.zeros(N, C, W).masked_fill(same, -1e5).masked_fill(hidden, -1e9)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), 0.0, False, attn_mask=mask.unsqueeze(0), scale=D ** -0.5)
        return out[0], lse[0]
    res = {}
    for name, f in [("batched", batched), ("fused", fused)]:
        ts = []
        for _ in range(reps):
            q.grad = k.grad = v.grad = None
            t0 = time.perf_counter(); out, lse = f(); t1 = time.perf_counter()
            (out.sum() + lse.sum()).backward(); t2 = time.perf_counter()
            ts.append((t1 - t0, t2 - t1))
        ts.sort(key=lambda x: x[0] + x[1])
        res[name] = ts[len(ts) // 2]
    o1, l1 = batched(); o2, l2 = fused()
    diff = (o1 - o2).abs().max().item()
    return res, diff
for label, N, C, W, D in [("lm4k", 4 * 2 * 64, 64, 128, 64), ("lm16k", 2 * 2 * 256, 64, 128, 64), ("enwik8 4K", 8 * 4 * 16, 256, 512, 128)]:
    res, diff = run(N, C, W, D)
    print(label, {k: f"fwd {v[0]*1e3:.1f} ms, bwd {v[1]*1e3:.1f} ms" for k, v in res.items()}, f"max |diff| {diff:.1e}")
