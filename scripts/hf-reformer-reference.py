#!/usr/bin/env python3
"""Speed, memory and output reference for transformers' `ReformerModelWithLMHead` on CPU,
to set beside the Rust implementation's numbers.

Pinned versions: transformers==5.24.0, torch==2.11.0 (the fixtures script's pins).

Model: `--model DIR` (a transformers Reformer folder: config.json + model.safetensors or
pytorch_model.bin), or `--make-enwik8 DIR`, which first builds a random model with the
full google/reformer-enwik8 configuration (12 layers, hidden 1024, 8 heads x 128, ff 4096,
LSH chunk 256 / 512 buckets / 4 hashes, local chunk 128, axial (128, 512) / (256, 768),
149,182,980 parameters) but with hash_seed 42, and saves it to DIR (config.json and
model.safetensors, about 597 MB; weights drawn like the test fixtures', seed 42). Both can
be given: the made folder is then the one measured.

Phases (`--phase`, default `all` = score4k, score16k, generate), each printing one JSON
line on stdout (logs go to stderr):

  score4k / score16k / score64k   the first 4,096 / 16,384 / 65,536 bytes of --data
      (after --offset) as one sequence, ids = byte + 2: one warm-up forward, then
      --repeats timed forwards (time.perf_counter, eval mode, torch.no_grad,
      use_cache=False, no attention mask); reports the median and every time, tokens/s
      (= length / median), and the loss in nats and bits per byte over the L-1 predicted
      bytes (cross-entropy of logits[t] against ids[t+1], computed in float64 from the
      float32 logits; equals transformers' `loss` with labels=input_ids). `identical`
      says whether all timed forwards gave bit-identical logits (they do when hash_seed
      is set).
  generate   greedy decoding: the first 1,024 bytes as prompt, then
      model.generate(do_sample=False, max_new_tokens=256, use_cache=True, num_hashes=...)
      with EOS disabled (the config's eos_token_id 2 is byte 0x00) so exactly 256 bytes
      come out; one short warm-up generation, then --repeats timed runs; reports the
      median seconds, new tokens/s, and the generated ids.

Every line carries `rss_peak_kib` (resource.getrusage ru_maxrss, the process's peak so
far) and `rss_peak_before_kib` (the same before the phase started). The peak is a
high-water mark, so for per-phase memory run each phase in its own process:

    for p in score4k score16k generate score64k; do
        python scripts/hf-reformer-reference.py --model DIR --data enwik8 --threads 2 --phase $p
    done

`--dump-logits FILE` (with score4k) writes input_ids (1, L) int64, logits (1, L, 258)
float32 and loss () float32 (mean nats, transformers' definition) of the 4,096-byte input
to a safetensors file, for a parity comparison with the Rust model on the same folder.

Determinism: with hash_seed set (the made model has 42; `--hash-seed` overrides a
folder's config, whose null would redraw rotations every forward), the same thread count
and the same machine, the logits are reproducible. transformers calls
torch.manual_seed(hash_seed) inside every LSH layer, so the global RNG is reseeded too.

The sizes can be shrunk to test the script quickly on a tiny model, e.g.

    python scripts/hf-reformer-reference.py --model tests/fixtures/hf-reformer/enwik8-like \\
        --data FILE --threads 1 --score4k-bytes 128 --score16k-bytes 256 \\
        --prompt-bytes 64 --new-bytes 32 --dump-logits /tmp/logits.safetensors

and `--make-enwik8 DIR --set hidden_size=64 --set ...` overrides config fields of the made
model (only for such tests).
"""
import argparse
import contextlib
import importlib.util
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import transformers
from safetensors.torch import save_file
from transformers import ReformerConfig, ReformerModelWithLMHead

PINNED = {"transformers": "5.24.0", "torch": "2.11.0"}

# The fields of google/reformer-enwik8's config.json (hub, 2020), with hash_seed set
# (the hub file has null).
ENWIK8_CONFIG = dict(
    vocab_size=258,
    hidden_size=1024,
    num_attention_heads=8,
    attention_head_size=128,
    feed_forward_size=4096,
    hidden_act="relu",
    attn_layers=["local", "local", "lsh", "local"] * 3,
    num_hashes=4,
    num_buckets=512,
    lsh_attn_chunk_length=256,
    lsh_num_chunks_before=1,
    lsh_num_chunks_after=0,
    local_attn_chunk_length=128,
    local_num_chunks_before=1,
    local_num_chunks_after=0,
    hidden_dropout_prob=0.2,
    lsh_attention_probs_dropout_prob=0.1,
    local_attention_probs_dropout_prob=0.2,
    max_position_embeddings=65536,
    axial_pos_embds=True,
    axial_pos_shape=[128, 512],
    axial_pos_embds_dim=[256, 768],
    axial_norm_std=1.0,
    layer_norm_eps=1e-12,
    initializer_range=0.02,
    is_decoder=True,
    tie_word_embeddings=False,
    pad_token_id=0,
    chunk_size_lm_head=0,
    chunk_size_feed_forward=0,
    hash_seed=42,
)
ENWIK8_PARAMETERS = 149_182_980
MAKE_SEED = 42
MAKE_QK_GAIN = 1.0

PHASES = ("score4k", "score16k", "score64k", "generate")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def emit(record):
    print(json.dumps(record), flush=True)


def rss_peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def fixtures_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf-reformer-fixtures.py")
    spec = importlib.util.spec_from_file_location("hf_reformer_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_enwik8(out_dir, overrides):
    config_fields = dict(ENWIK8_CONFIG)
    config_fields.update(overrides)
    config = ReformerConfig(**config_fields)
    model = ReformerModelWithLMHead(config)
    n = sum(p.numel() for p in model.parameters())
    if not overrides and n != ENWIK8_PARAMETERS:
        sys.exit(f"error: {n} parameters, expected {ENWIK8_PARAMETERS}")
    fixtures_module().draw_weights(model, MAKE_SEED, MAKE_QK_GAIN)
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    gen_cfg = os.path.join(out_dir, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)
    log(f"made {out_dir}: {n} parameters, overrides {overrides or 'none'}")
    return n


def load_model(model_dir, hash_seed):
    kwargs = {} if hash_seed is None else {"hash_seed": hash_seed}
    model, info = ReformerModelWithLMHead.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True, **kwargs
    )
    missing = set(info["missing_keys"])
    fixup = False
    if "lm_head.decoder.bias" in missing:
        # A transformers 4.x file stores the (tied) output bias only as lm_head.bias;
        # 5.x has its own decoder.bias and would leave it at zero.
        with torch.no_grad():
            model.lm_head.decoder.bias.copy_(model.lm_head.bias)
        missing.discard("lm_head.decoder.bias")
        fixup = True
        log("note: lm_head.decoder.bias missing, copied from lm_head.bias (transformers 4.x layout)")
    if missing:
        sys.exit(f"error: missing weights {sorted(missing)}")
    model.eval()
    model.generation_config.eos_token_id = None
    return model, fixup


def read_ids(data, offset, length):
    chunk = data[offset : offset + length]
    if len(chunk) < length:
        sys.exit(f"error: --data has {len(data) - offset} bytes after --offset, need {length}")
    return torch.tensor([[b + 2 for b in chunk]], dtype=torch.int64)


def score(model, ids, repeats):
    def forward():
        with torch.no_grad():
            return model(ids, use_cache=False).logits

    forward()  # warm-up
    times, first, identical = [], None, True
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits = forward()
        times.append(time.perf_counter() - t0)
        if first is None:
            first = logits
        else:
            identical = identical and torch.equal(first, logits)
    nats = torch.nn.functional.cross_entropy(first[0, :-1].double(), ids[0, 1:]).item()
    return first, times, identical, nats


def phase_score(name, model, data, args, common):
    length = getattr(args, f"{name}_bytes")
    ids = read_ids(data, args.offset, length)
    before = rss_peak_kib()
    logits, times, identical, nats = score(model, ids, args.repeats)
    median = statistics.median(times)
    record = dict(
        phase=name,
        length=length,
        repeats=args.repeats,
        seconds_median=median,
        seconds=times,
        tokens_per_s=length / median,
        loss_nats=nats,
        bits_per_byte=nats / math.log(2),
        predicted_bytes=length - 1,
        identical=identical,
        rss_peak_before_kib=before,
        rss_peak_kib=rss_peak_kib(),
        **common,
    )
    if name == "score4k" and args.dump_logits:
        with torch.no_grad():
            hf_loss = model(ids, labels=ids, use_cache=False).loss.float().reshape(())
        meta = dict(model=os.path.abspath(args.model), length=str(length), offset=str(args.offset),
                    hash_seed=str(common["hash_seed"]), num_hashes=str(common["num_hashes"]),
                    threads=str(args.threads), transformers=transformers.__version__, torch=torch.__version__)
        save_file(
            dict(input_ids=ids.contiguous(), logits=logits.float().contiguous(), loss=hf_loss.contiguous()),
            args.dump_logits,
            metadata={"reference": json.dumps(meta, sort_keys=True)},
        )
        record["dump_logits"] = args.dump_logits
        record["hf_loss_nats"] = hf_loss.item()
    emit(record)


def phase_generate(model, data, args, common):
    ids = read_ids(data, args.offset, args.prompt_bytes)
    new = args.new_bytes
    gen_kwargs = dict(
        do_sample=False,
        use_cache=True,
        num_hashes=common["num_hashes"],
        eos_token_id=None,
        pad_token_id=model.config.pad_token_id,
    )

    def generate(n):
        # transformers' Reformer prepare_inputs_for_generation print()s three warnings per
        # step on stdout, which is kept for the JSON lines.
        with torch.no_grad(), open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            return model.generate(ids, max_new_tokens=n, **gen_kwargs)

    before = rss_peak_kib()
    generate(min(new, 8))  # warm-up
    times, outputs = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = generate(new)
        times.append(time.perf_counter() - t0)
        outputs.append(out)
    produced = outputs[0][0, ids.shape[1] :]
    if produced.numel() != new:
        sys.exit(f"error: generated {produced.numel()} tokens, asked for {new}")
    median = statistics.median(times)
    gen_ids = produced.tolist()
    emit(
        dict(
            phase="generate",
            prompt_length=ids.shape[1],
            new_tokens=new,
            repeats=args.repeats,
            seconds_median=median,
            seconds=times,
            new_tokens_per_s=new / median,
            identical=all(torch.equal(outputs[0], o) for o in outputs[1:]),
            generated_ids=gen_ids,
            generated_text=bytes(t - 2 for t in gen_ids if 2 <= t < 258).decode("utf-8", "replace"),
            rss_peak_before_kib=before,
            rss_peak_kib=rss_peak_kib(),
            **common,
        )
    )


def parse_set(items):
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key] = json.loads(value)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="transformers Reformer folder to measure")
    ap.add_argument("--make-enwik8", metavar="DIR", help="build the random full-size enwik8 model into DIR first")
    ap.add_argument("--set", action="append", metavar="KEY=JSON",
                    help="(tests only) override a config field of --make-enwik8")
    ap.add_argument("--data", help="byte file (e.g. enwik8)")
    ap.add_argument("--offset", type=int, default=0, help="first byte of --data used")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--phase", choices=("all",) + PHASES, default="all",
                    help="all = score4k, score16k, generate; score64k only when asked")
    ap.add_argument("--num-hashes", type=int, help="override the config's num_hashes (scoring and generation)")
    ap.add_argument("--hash-seed", type=int, help="override the folder's hash_seed")
    ap.add_argument("--dump-logits", metavar="FILE", help="write the score4k logits to a safetensors file")
    ap.add_argument("--score4k-bytes", type=int, default=4096)
    ap.add_argument("--score16k-bytes", type=int, default=16384)
    ap.add_argument("--score64k-bytes", type=int, default=65536)
    ap.add_argument("--prompt-bytes", type=int, default=1024)
    ap.add_argument("--new-bytes", type=int, default=256)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    found = {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}
    if found != PINNED:
        log(f"warning: pinned {PINNED}, found {found}")

    if args.make_enwik8:
        t0 = time.perf_counter()
        n = make_enwik8(args.make_enwik8, parse_set(args.set))
        emit(dict(phase="make", dir=args.make_enwik8, parameters=n, seconds=time.perf_counter() - t0,
                  bytes=os.path.getsize(os.path.join(args.make_enwik8, "model.safetensors"))))
        args.model = args.model or args.make_enwik8
    elif args.set:
        sys.exit("error: --set only applies to --make-enwik8")
    if not args.model:
        sys.exit("error: give --model DIR or --make-enwik8 DIR")
    if not args.data:
        if args.make_enwik8:
            return
        sys.exit("error: --data FILE is required")
    if args.dump_logits and args.phase not in ("all", "score4k"):
        sys.exit("error: --dump-logits needs the score4k phase")

    with open(args.data, "rb") as f:
        data = f.read()

    t0 = time.perf_counter()
    model, fixup = load_model(args.model, args.hash_seed)
    load_s = time.perf_counter() - t0
    config = model.config
    if config.hash_seed is None:
        log("warning: hash_seed is null: LSH rotations are redrawn every forward, outputs are not reproducible")
    common = dict(
        model=os.path.abspath(args.model),
        threads=torch.get_num_threads(),
        hash_seed=config.hash_seed,
        num_hashes=args.num_hashes if args.num_hashes is not None else config.num_hashes,
        transformers=transformers.__version__,
        torch=torch.__version__,
    )
    emit(dict(phase="load", seconds=load_s, parameters=sum(p.numel() for p in model.parameters()),
              bias_fixup=fixup, rss_peak_kib=rss_peak_kib(), **common))

    if args.num_hashes is not None:
        # scoring: the forward's num_hashes argument reaches every LSH layer
        score_model = _NumHashes(model, args.num_hashes)
    else:
        score_model = model
    phases = ("score4k", "score16k", "generate") if args.phase == "all" else (args.phase,)
    for name in phases:
        log(f"phase {name}")
        if name == "generate":
            phase_generate(model, data, args, common)
        else:
            phase_score(name, score_model, data, args, common)


class _NumHashes:
    """Calls the model with a fixed num_hashes."""

    def __init__(self, model, num_hashes):
        self.model, self.num_hashes = model, num_hashes

    def __call__(self, *args, **kwargs):
        return self.model(*args, num_hashes=self.num_hashes, **kwargs)


if __name__ == "__main__":
    main()
