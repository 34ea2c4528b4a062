#!/usr/bin/env python3
"""Golden outputs of transformers' `ReformerModelWithLMHead` for the Rust importer's tests.

Builds three small random byte-level Reformer language models (vocab 258: token = byte + 2,
0 = padding), saves each with `save_pretrained` (safetensors) and writes, for a few inputs
cut from a fixed English text, what transformers computes: logits, loss, the embedding
output, the LSH buckets of every LSH layer (and, for the smallest model, both reversible
streams after every layer).

Pinned versions: transformers==5.24.0, torch==2.11.0 (CPU), safetensors. Other versions
are refused unless --any-version is given (the numbers would change). Regenerate with

    python scripts/hf-reformer-fixtures.py --out tests/fixtures/hf-reformer

The script calls torch.set_num_threads(1) before building anything: the reductions inside
matmul and einsum are then done in one fixed order, which is what makes two runs (and the
reload check below) bit-identical, and near-tie bucket decisions stable. The outputs are
still specific to this CPU's kernels (AVX2 vs AVX-512 dispatch can move the last ulp), so
the Rust tests compare logits with a tolerance; buckets are compared exactly, and every
bucket decision is checked here to have a comfortable margin (`bucket_gap.<i>`).

Cases (directory names under --out):

  enwik8-like  the released google/reformer-enwik8 layer pattern
               [local, local, lsh, local] x 3 (LSH at layers 2, 6, 10), shrunk: hidden 64,
               2 heads x 48 (non-square projections), ff 128, 8 buckets, 4 hashes,
               LSH chunk 16, local chunk 8, axial (16, 32) / (24, 40), hash_seed 7.
               Inputs: L = 128 (multiple of lcm 16), 100 (padded to 112), 16 (LSH dense path).
  crime-like   [local, lsh] x 3, hidden 32, 2 heads x 16, ff 64, factorised buckets [4, 8]
               (32 buckets, rotation size 12), 2 hashes, chunks 16 / 16, axial (16, 32) /
               (8, 24), hash_seed 11. Inputs: L = 128; L = 75 with batch 2 (two texts,
               padded to 80).
  lsh-only     [lsh, lsh], hidden 32, 4 heads x 8, ff 64, 4 buckets, 8 hashes, LSH chunk 32
               (local chunk 64 recorded, unused except in the lcm), axial (8, 64) / (16, 16),
               hash_seed 3. Inputs: L = 128, 40 (padded to 64, LSH path with the padding
               bucket). Its model.safetensors is rewritten to the transformers 4.x layout:
               the output bias only under `lm_head.bias`, no `lm_head.decoder.bias`.

Weights are not transformers' init (std 0.02 makes attention nearly uniform and hides
masking/sorting bugs): every parameter is redrawn from a seeded torch.Generator in
`named_parameters()` order: Linear weights normal with std 1/sqrt(fan_in), query_key /
query / key weights times `qk_gain` (1.5, lsh-only 3.0: 9-27x transformers' 0.02 std at
these widths), LayerNorm weights
1 + 0.25 N, LayerNorm and feed-forward biases 0.25 N, word and axial position embeddings
N(0, 1), `lm_head.decoder.bias` 0.5 N. In the two transformers-5 layout cases,
`lm_head.bias` (a parameter 5.24 keeps but never uses) holds *different* random values, so
a loader that prefers it over `lm_head.decoder.bias` gets wrong logits. The script checks
that attention is neither uniform nor one-hot (mean row maximum of the attention
probabilities 0.31-0.58 per layer, under 7% of rows above 0.99), and the weight seeds were
picked so that no bucket decision is a near-tie (see bucket_gap below).

Files per case: `config.json` (complete, written by save_pretrained), `model.safetensors`,
and `reference-<L>.safetensors` per input, holding (float32 / int64, contiguous):

  input_ids        (B, L) int64, bytes + 2.
  logits           (B, L, 258) float32: model(input_ids, use_cache=False).logits, eval
                   mode, no_grad, no attention_mask passed (transformers pads internally
                   when L is not a multiple of lcm(chunks) and L > min(chunks); logits are
                   returned for the L real positions only).
  loss             () float32: model(input_ids, labels=input_ids, use_cache=False).loss =
                   mean over B*(L-1) of cross_entropy(logits[:, t], input_ids[:, t+1]).
  embeddings       (B, L, hidden) float32: model.reformer.embeddings(input_ids), i.e.
                   word embedding + axial position encoding for positions 0..L-1.
  buckets.<i>      for every LSH layer i that hashes (absent when L <= lsh chunk: the dense
                   path returns no buckets): (B, H, num_hashes, Lp) int64, exactly the
                   `buckets` of that layer's LSHSelfAttention output. Lp is the *padded*
                   length (metadata `padded_length`), so padded positions are included.
                   Round offsets ARE included: value = r * S + b, where r is the hash round,
                   b the bucket in [0, N) (N = num_buckets, or the product of the factors),
                   and S = N without padding, N + 1 when transformers padded the input;
                   padded positions have b = N (the extra padding bucket). The metadata
                   gives N (`num_buckets_total`) and S (`bucket_stride`).
  bucket_gap.<i>   () float32, for each buckets.<i>: the smallest gap, over real
                   (unpadded) positions, rounds, heads and factors, between the largest and
                   second-largest entry of cat([rotated, -rotated]) whose argmax is the
                   bucket (rotated = einsum("bmtd,mdhr->bmhtr", qk, rotations)).
  bucket_rms.<i>   () float32: the rms of those rotated values (real positions). Every
                   case has gap / rms >= 2e-4, far above float32 noise, so the Rust side
                   must reproduce the buckets exactly; if it does not, compare its own
                   rotated values' gap with these before suspecting the hashing code.
  hidden.<i>.y1    lsh-only case only: (B, L, hidden) float32, the two reversible streams
  hidden.<i>.y2    after layer i (unpadded positions): y1 = x1 + Attn(LN(x2)) (transformers'
                   `attn_output`), y2 = x2 + FF(y1) (`hidden_states`); both streams start
                   as the embeddings. The LM head sees LayerNorm(cat([y1, y2], -1)).

Safetensors metadata of each reference file: one key, "fixture", a JSON object (sorted
keys, all values strings) with case, length, batch, padded_length, hash_seed, num_hashes,
num_buckets_total, bucket_stride, lsh_layers and the transformers / torch versions. Running
the script twice gives byte-identical files.

Checks done before anything is written: two forwards agree bitwise; the recomputed buckets
(same seed, same rotation draw, own argmax) match transformers'; the loss matches the
cross-entropy of the logits; after saving, `from_pretrained` gives bit-identical logits
(for lsh-only, 5.24 reports `lm_head.decoder.bias` missing and leaves it zero, so the check
loads the rewritten file with `lm_head.bias` mapped onto `lm_head.decoder.bias` instead,
and also checks the pre-rewrite state dict).
"""
import argparse
import json
import math
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import ReformerConfig, ReformerModelWithLMHead

PINNED = {"transformers": "5.24.0", "torch": "2.11.0"}

# Fixed texts (written for these fixtures). Not pure ASCII: "café" and "naïve" put bytes
# above 127 into the inputs.
TEXT_A = (
    "The river was low that autumn, and the old ferryman spent his mornings mending nets "
    "on the landing while the fog lifted off the water. Children from the village came "
    "down after school to watch him work; he told them about the winter the ice carried "
    "away the mill wheel, and about the heron that nested in the chimney of the toll "
    "house. Nobody believed half of it, and he did not seem to mind."
).encode("utf-8")
TEXT_B = (
    "A lighthouse keeper's log is mostly weather: wind from the north-east, a falling "
    "glass, rain squalls by noon, the lamp lit at 6 and trimmed at midnight. Now and then "
    "a naïve line breaks the pattern - a steamer too close to the reef, or oranges and a "
    "letter from the café in town on the supply boat."
).encode("utf-8")

COMMON = dict(
    vocab_size=258,
    is_decoder=True,
    pad_token_id=0,
    tie_word_embeddings=False,
    lsh_num_chunks_after=0,
    local_num_chunks_after=0,
    lsh_num_chunks_before=1,
    local_num_chunks_before=1,
    axial_pos_embds=True,
    axial_norm_std=1.0,
    hidden_act="relu",
    layer_norm_eps=1e-12,
    chunk_size_lm_head=0,
    chunk_size_feed_forward=0,
    initializer_range=0.02,
)

CASES = [
    dict(
        name="enwik8-like",
        config=dict(
            attn_layers=["local", "local", "lsh", "local"] * 3,
            hidden_size=64,
            num_attention_heads=2,
            attention_head_size=48,
            feed_forward_size=128,
            num_buckets=8,
            num_hashes=4,
            lsh_attn_chunk_length=16,
            local_attn_chunk_length=8,
            axial_pos_shape=[16, 32],
            axial_pos_embds_dim=[24, 40],
            max_position_embeddings=512,
            hash_seed=7,
            hidden_dropout_prob=0.2,
            lsh_attention_probs_dropout_prob=0.1,
            local_attention_probs_dropout_prob=0.2,
        ),
        weight_seed=1010,
        qk_gain=1.5,
        # (length, texts): one row per text
        inputs=[(128, [TEXT_A]), (100, [TEXT_A]), (16, [TEXT_A])],
        layout="v5",
        save_hidden=False,
    ),
    dict(
        name="crime-like",
        config=dict(
            attn_layers=["local", "lsh"] * 3,
            hidden_size=32,
            num_attention_heads=2,
            attention_head_size=16,
            feed_forward_size=64,
            num_buckets=[4, 8],
            num_hashes=2,
            lsh_attn_chunk_length=16,
            local_attn_chunk_length=16,
            axial_pos_shape=[16, 32],
            axial_pos_embds_dim=[8, 24],
            max_position_embeddings=512,
            hash_seed=11,
            hidden_dropout_prob=0.05,
            lsh_attention_probs_dropout_prob=0.05,
            local_attention_probs_dropout_prob=0.05,
        ),
        weight_seed=1017,
        qk_gain=1.5,
        inputs=[(128, [TEXT_A]), (75, [TEXT_A, TEXT_B])],
        layout="v5",
        save_hidden=False,
    ),
    dict(
        name="lsh-only",
        config=dict(
            attn_layers=["lsh", "lsh"],
            hidden_size=32,
            num_attention_heads=4,
            attention_head_size=8,
            feed_forward_size=64,
            num_buckets=4,
            num_hashes=8,
            lsh_attn_chunk_length=32,
            local_attn_chunk_length=64,
            axial_pos_shape=[8, 64],
            axial_pos_embds_dim=[16, 16],
            max_position_embeddings=512,
            hash_seed=3,
            hidden_dropout_prob=0.1,
            lsh_attention_probs_dropout_prob=0.1,
            local_attention_probs_dropout_prob=0.1,
        ),
        weight_seed=1003,
        qk_gain=3.0,
        inputs=[(128, [TEXT_A]), (40, [TEXT_A])],
        layout="v4",
        save_hidden=True,
    ),
]

# Attention must be neither near-uniform nor near-one-hot (checked on the first input).
MIN_MEAN_MAX_PROB, MAX_MEAN_MAX_PROB = 0.25, 0.90
MAX_ONE_HOT_FRACTION = 0.5  # rows whose largest probability exceeds 0.99
# Smallest allowed argmax gap of a bucket decision, relative to the rms of the rotated
# values; the weight seeds were picked (among the first 40-60 tried) to satisfy it.
MIN_RELATIVE_BUCKET_GAP = 2e-4


def check_versions(allow_any):
    found = {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}
    if found != PINNED:
        msg = f"pinned {PINNED}, found {found}"
        if not allow_any:
            sys.exit(f"error: {msg} (pass --any-version to continue anyway)")
        print(f"warning: {msg}", file=sys.stderr)


def make_config(case):
    return ReformerConfig(**COMMON, **case["config"])


QK_WEIGHTS = (
    "self_attention.query_key.weight",
    "self_attention.query.weight",
    "self_attention.key.weight",
)


def draw_weights(model, seed, qk_gain):
    """Redraw every parameter from a seeded generator (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("layer_norm.weight"):
                v = 1.0 + 0.25 * z
            elif name.endswith("layer_norm.bias"):
                v = 0.25 * z
            elif name in ("lm_head.bias", "lm_head.decoder.bias"):
                v = 0.5 * z
            elif name.endswith(".bias"):
                v = 0.25 * z
            elif "word_embeddings" in name or "position_embeddings" in name:
                v = z
            elif p.dim() == 2:
                v = z / math.sqrt(p.shape[1])
                if name.endswith(QK_WEIGHTS):
                    v = v * qk_gain
            else:
                raise ValueError(f"no rule for parameter {name} {tuple(p.shape)}")
            p.copy_(v)


def lsh_layer_ids(config):
    return [i for i, t in enumerate(config.attn_layers) if t == "lsh"]


def lcm_and_min_chunk(config):
    lengths = []
    if "lsh" in config.attn_layers:
        lengths.append(config.lsh_attn_chunk_length)
    if "local" in config.attn_layers:
        lengths.append(config.local_attn_chunk_length)
    return math.lcm(*lengths), min(lengths)


def padded_length(config, length):
    lcm, min_chunk = lcm_and_min_chunk(config)
    if length % lcm != 0 and length > min_chunk:
        return length + lcm - length % lcm
    return length


def bucket_count(config):
    nb = config.num_buckets
    return nb if isinstance(nb, int) else math.prod(nb)


def make_input(texts, length):
    rows = []
    for t in texts:
        assert len(t) >= length, (len(t), length)
        rows.append([b + 2 for b in t[:length]])
    return torch.tensor(rows, dtype=torch.int64)


class Capture:
    """Forward hooks: the input and `buckets` of every LSH self-attention, the two
    streams after every layer."""

    def __init__(self, model):
        self.handles = []
        self.attn_in, self.buckets, self.streams = {}, {}, {}
        self.embeddings = None
        self.handles.append(model.reformer.embeddings.register_forward_hook(self._embeddings))
        for i, layer in enumerate(model.reformer.encoder.layers):
            sa = layer.attention.self_attention
            if type(sa).__name__ == "LSHSelfAttention":
                self.handles.append(sa.register_forward_pre_hook(self._pre(i), with_kwargs=True))
                self.handles.append(sa.register_forward_hook(self._post(i)))
            self.handles.append(layer.register_forward_hook(self._layer(i)))

    def _embeddings(self, module, args, output):
        self.embeddings = output.detach().clone()

    def _pre(self, i):
        def hook(module, args, kwargs):
            self.attn_in[i] = kwargs["hidden_states"].detach().clone()

        return hook

    def _post(self, i):
        def hook(module, args, output):
            self.buckets[i] = None if output.buckets is None else output.buckets.detach().clone()

        return hook

    def _layer(self, i):
        def hook(module, args, output):
            self.streams[i] = (output.attn_output.detach().clone(), output.hidden_states.detach().clone())

        return hook

    def clear(self):
        self.attn_in.clear()
        self.buckets.clear()
        self.streams.clear()
        self.embeddings = None

    def remove(self):
        for h in self.handles:
            h.remove()


def recompute_buckets(attn, config, x, real_length):
    """Hash `x` (the LSH layer's input) the way transformers does; return the buckets with
    offsets, the smallest argmax gap over real positions, the rms of the rotated values
    there, the bucket count and the round stride."""
    B, Lp, _ = x.shape
    H, dh, R = attn.num_attention_heads, attn.attention_head_size, attn.num_hashes
    qk = attn.query_key(x).view(B, Lp, H, dh).transpose(1, 2)
    factors = [config.num_buckets] if isinstance(config.num_buckets, int) else list(config.num_buckets)
    torch.manual_seed(config.hash_seed)
    rotations = torch.randn((H, dh, R, sum(factors) // 2), dtype=qk.dtype)
    rotated = torch.einsum("bmtd,mdhr->bmhtr", qk, rotations)
    buckets = torch.zeros(B, H, R, Lp, dtype=torch.int64)
    gap = math.inf
    rms = rotated[..., :real_length, :].pow(2).mean().sqrt().item()
    start, mult = 0, 1
    for f in factors:
        part = rotated[..., start : start + f // 2]
        start += f // 2
        full = torch.cat([part, -part], dim=-1)
        buckets = buckets + mult * torch.argmax(full, dim=-1)
        top2 = torch.topk(full[..., :real_length, :], 2, dim=-1).values
        gap = min(gap, (top2[..., 0] - top2[..., 1]).min().item())
        mult *= f
    n = mult
    stride = n
    if Lp > real_length:
        buckets[..., real_length:] = n
        stride = n + 1
    offsets = torch.arange(R, dtype=torch.int64).view(1, 1, R, 1) * stride
    return buckets + offsets, gap, rms, n, stride


def attention_stats(attentions):
    """(mean of the row max, fraction of rows with max > 0.99, mean normalised entropy) per
    layer, over rows of `output_attentions` (masked keys have probability 0)."""
    stats = []
    for a in attentions:
        rows = a.reshape(-1, a.shape[-1]).double()
        rows = rows[rows.sum(-1) > 0.5]
        mx = rows.max(-1).values
        live = (rows > 0).sum(-1).clamp(min=2).double()
        ent = -(rows.clamp(min=1e-30).log() * rows).sum(-1) / live.log()
        stats.append((mx.mean().item(), (mx > 0.99).double().mean().item(), ent.mean().item()))
    return stats


def forward_all(model, ids, capture):
    capture.clear()
    with torch.no_grad():
        out = model(ids, use_cache=False)
    logits = out.logits.detach().clone()
    state = dict(
        logits=logits,
        buckets={k: v for k, v in capture.buckets.items()},
        attn_in={k: v for k, v in capture.attn_in.items()},
        streams={k: v for k, v in capture.streams.items()},
        embeddings=capture.embeddings,
    )
    return state


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits.detach().clone()


def rewrite_v4_layout(path):
    """transformers 4.x saves the tied output bias once, as `lm_head.bias`."""
    tensors = load_file(path)
    tensors["lm_head.bias"] = tensors.pop("lm_head.decoder.bias").contiguous()
    save_file(dict(sorted(tensors.items())), path, metadata={"format": "pt"})


def write_pickled(out_root, log):
    """lsh-only once more as `torch.save` writes it (pytorch_model.bin, zip format), for
    the importer's libtorch unpickler: pickled/lsh-only/{config.json, pytorch_model.bin}."""
    source = os.path.join(out_root, "lsh-only")
    target = os.path.join(out_root, "pickled", "lsh-only")
    os.makedirs(target, exist_ok=True)
    shutil.copy(os.path.join(source, "config.json"), os.path.join(target, "config.json"))
    state = load_file(os.path.join(source, "model.safetensors"))
    torch.save(dict(sorted(state.items())), os.path.join(target, "pytorch_model.bin"))
    log(f"  pickled copy in {target}")


def build_case(case, out_root, log):
    name = case["name"]
    config = make_config(case)
    model = ReformerModelWithLMHead(config)
    draw_weights(model, case["weight_seed"], case["qk_gain"])
    model.eval()
    assert not model.training
    lsh_ids = lsh_layer_ids(config)
    capture = Capture(model)

    case_dir = os.path.join(out_root, name)
    if os.path.isdir(case_dir):
        shutil.rmtree(case_dir)
    os.makedirs(case_dir)

    # Attention sharpness, on the first (longest, unpadded) input.
    length0, texts0 = case["inputs"][0]
    with torch.no_grad():
        att = model(make_input(texts0, length0), use_cache=False, output_attentions=True).attentions
    for i, (mean_max, one_hot, ent) in enumerate(attention_stats(att)):
        log(f"  {name} layer {i:2d} {config.attn_layers[i]:5s}: mean max prob {mean_max:.3f}, "
            f"rows > 0.99 {one_hot:.3f}, normalised entropy {ent:.3f}")
        assert MIN_MEAN_MAX_PROB < mean_max < MAX_MEAN_MAX_PROB, (name, i, mean_max)
        assert one_hot < MAX_ONE_HOT_FRACTION, (name, i, one_hot)

    references = {}
    for length, texts in case["inputs"]:
        ids = make_input(texts, length)
        B = ids.shape[0]
        lp = padded_length(config, length)
        first = forward_all(model, ids, capture)
        second = forward_all(model, ids, capture)
        assert torch.equal(first["logits"], second["logits"]), f"{name} L={length}: two forwards differ"
        assert first["logits"].shape == (B, length, config.vocab_size)
        with torch.no_grad():
            out = model(ids, labels=ids, use_cache=False)
            emb = model.reformer.embeddings(ids)
        assert torch.equal(out.logits, first["logits"]), f"{name} L={length}: logits with labels differ"
        # what the encoder saw (padded length) starts with what embeddings(input_ids) gives
        assert first["embeddings"].shape[1] == lp and torch.equal(first["embeddings"][:, :length], emb)
        ce = torch.nn.functional.cross_entropy(
            first["logits"][:, :-1].reshape(-1, config.vocab_size), ids[:, 1:].reshape(-1)
        )
        assert torch.allclose(ce, out.loss, rtol=1e-6, atol=1e-6), (ce.item(), out.loss.item())

        tensors = dict(
            input_ids=ids.contiguous(),
            logits=first["logits"].float().contiguous(),
            loss=out.loss.detach().float().reshape(()).contiguous(),
            embeddings=emb.float().contiguous(),
        )
        n_total, stride = bucket_count(config), bucket_count(config)
        for i in lsh_ids:
            b = first["buckets"].get(i)
            assert torch.equal(b, second["buckets"].get(i)) if b is not None else second["buckets"].get(i) is None
            if length <= config.lsh_attn_chunk_length:
                assert b is None, f"{name} L={length} layer {i}: expected the dense path"
                continue
            assert b is not None and b.shape == (B, config.num_attention_heads, config.num_hashes, lp), b.shape
            attn = model.reformer.encoder.layers[i].attention.self_attention
            with torch.no_grad():
                mine, gap, rms, n_total, stride = recompute_buckets(attn, config, first["attn_in"][i], length)
            assert torch.equal(mine, b), f"{name} L={length} layer {i}: recomputed buckets differ"
            assert gap > MIN_RELATIVE_BUCKET_GAP * rms, f"{name} L={length} layer {i}: near-tie, gap {gap}, rms {rms}"
            tensors[f"buckets.{i}"] = b.to(torch.int64).contiguous()
            tensors[f"bucket_gap.{i}"] = torch.tensor(gap, dtype=torch.float32)
            tensors[f"bucket_rms.{i}"] = torch.tensor(rms, dtype=torch.float32)
            log(f"  {name} L={length} layer {i}: buckets {tuple(b.shape)}, min argmax gap {gap:.5f} "
                f"(rms of rotated values {rms:.2f}, ratio {gap / rms:.1e})")
        if case["save_hidden"]:
            for i, (y1, y2) in first["streams"].items():
                tensors[f"hidden.{i}.y1"] = y1[:, :length].float().contiguous()
                tensors[f"hidden.{i}.y2"] = y2[:, :length].float().contiguous()
        meta = dict(
            case=name,
            length=str(length),
            batch=str(B),
            padded_length=str(lp),
            hash_seed=str(config.hash_seed),
            num_hashes=str(config.num_hashes),
            num_buckets_total=str(n_total),
            bucket_stride=str(stride),
            lsh_layers=",".join(map(str, lsh_ids)),
            transformers=transformers.__version__,
            torch=torch.__version__,
        )
        references[length] = (tensors, meta)
        log(f"  {name} L={length} B={B} padded={lp}: loss {out.loss.item():.4f}")
    capture.remove()

    # Save the model, then reload it and compare logits bit for bit.
    pre_rewrite_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.save_pretrained(case_dir, safe_serialization=True)
    gen_cfg = os.path.join(case_dir, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)
    weights = os.path.join(case_dir, "model.safetensors")
    if case["layout"] == "v4":
        rewrite_v4_layout(weights)
    extra = sorted(set(os.listdir(case_dir)) - {"config.json", "model.safetensors"})
    assert not extra, f"unexpected files from save_pretrained: {extra}"

    saved = load_file(weights)
    if case["layout"] == "v4":
        assert "lm_head.decoder.bias" not in saved and "lm_head.bias" in saved
    else:
        assert "lm_head.decoder.bias" in saved and "lm_head.bias" in saved
        assert not torch.equal(saved["lm_head.bias"], saved["lm_head.decoder.bias"])

    reloaded, info = ReformerModelWithLMHead.from_pretrained(case_dir, output_loading_info=True)
    reloaded.eval()
    if case["layout"] == "v4":
        # transformers 5.24 does not map lm_head.bias onto lm_head.decoder.bias.
        assert "lm_head.decoder.bias" in info["missing_keys"], info
        log(f"  {name}: from_pretrained reports missing {sorted(info['missing_keys'])} (expected, 4.x layout)")
        fixed = ReformerModelWithLMHead(ReformerConfig.from_pretrained(case_dir))
        state = dict(saved)
        state["lm_head.decoder.bias"] = state["lm_head.bias"]
        fixed.load_state_dict(state, strict=True)
        fixed.eval()
        check_models = [("rewritten file, lm_head.bias -> decoder.bias", fixed)]
        pre = ReformerModelWithLMHead(ReformerConfig.from_pretrained(case_dir))
        pre.load_state_dict(pre_rewrite_state, strict=True)
        pre.eval()
        check_models.append(("pre-rewrite state dict", pre))
    else:
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        check_models = [("from_pretrained", reloaded)]
    for what, m in check_models:
        for length, (tensors, _) in references.items():
            got = logits_of(m, tensors["input_ids"])
            assert torch.equal(got, tensors["logits"]), f"{name} L={length}: {what} logits differ"
        log(f"  {name}: {what}: logits bit-identical")

    for length, (tensors, meta) in references.items():
        # One metadata key holding sorted JSON: safetensors writes a multi-key metadata map
        # in hash order, which would make the files differ from run to run.
        save_file(
            tensors,
            os.path.join(case_dir, f"reference-{length}.safetensors"),
            metadata={"fixture": json.dumps(meta, sort_keys=True)},
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="fixtures folder, e.g. tests/fixtures/hf-reformer")
    ap.add_argument("--case", action="append", help="only this case (repeatable)")
    ap.add_argument("--any-version", action="store_true", help="run with other transformers/torch versions")
    args = ap.parse_args()
    torch.set_num_threads(1)
    check_versions(args.any_version)
    transformers.logging.set_verbosity_error()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    os.makedirs(args.out, exist_ok=True)
    for case in CASES:
        if args.case and case["name"] not in args.case:
            continue
        log(f"{case['name']}:")
        build_case(case, args.out, log)
    if not args.case or "lsh-only" in args.case:
        write_pickled(args.out, log)
    total = 0
    for root, _, files in os.walk(args.out):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    log(f"{args.out}: {total} bytes")


if __name__ == "__main__":
    main()
