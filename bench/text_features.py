"""Benchmark: cached text embedding end to end against a bare transformers forward loop, in one run.

"Ours" is `headstart.inference.embed` on the packaged all-MiniLM-L6-v2 (hash the texts, look up the cache,
tokenize + forward + pool the missing ones in batches, write a cache shard). The baseline is what one would
write by hand: the same texts tokenized beforehand (not timed) in the same batches with the same tokenizer
settings, then a plain `torch.inference_mode()` loop calling the Hugging Face model and mean-pooling (plus the
model's L2 normalisation, so the outputs can be compared). Both sides run one warm-up batch of other tweets
first, under the same allocator settings. Targets: cold ours >= 0.9x the bare loop (the cache and the data
pipeline may cost at most 10%); a second run over the same texts (cache hit) is reported as a speed-up.

The texts are real tweets (`headstart.data.tweets`, deduplicated), so the padding per batch is realistic.

Run: .venv/bin/python bench/text_features.py [--texts 512] [--batch-size 32] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from headstart._allocator import tune_allocator
from headstart.backbones import Backbone, create_backbone
from headstart.data import tweets
from headstart.inference import embed

COLD_TARGET = 0.9


def sample_tweets(n: int, seed: int = 0) -> list[str]:
    """`n` + one batch of distinct real tweets in random order; the caller splits off the warm-up batch."""
    texts, _, _ = tweets.load_tweets()
    rng = np.random.default_rng(seed)
    return [texts[i] for i in rng.choice(len(texts), size=min(n, len(texts)), replace=False)]


def tokenize(bb: Backbone, texts: list[str], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The batches `embed` will see: same split, same tokenizer call, padded to each batch's longest text."""
    max_length = bb.spec.preprocess.max_length
    return [dict(bb.tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")) for i in range(0, len(texts), batch_size)]


def bare_loop(bb: Backbone, batches: list[dict[str, torch.Tensor]]) -> tuple[float, torch.Tensor]:
    """The hand-written loop: HF model forward, masked mean pooling, optional L2 normalisation.

    Moving each batch to the model's device and the result back to the CPU is timed, as `embed` does both.
    """
    model, normalize = bb.body.model, bb.spec.preprocess.normalize
    device = next(model.parameters()).device
    start = time.perf_counter()
    out = []
    with torch.inference_mode():
        for enc in batches:
            enc = {k: v.to(device) for k, v in enc.items()}
            hidden = model(**enc).last_hidden_state
            weights = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            out.append((torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled).float().cpu())
    return time.perf_counter() - start, torch.cat(out)


def ours(bb: Backbone, texts: list[str], batch_size: int, cache_dir: str) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    feats, ok = embed(bb, texts, batch_size=batch_size, use_cache=True, cache_dir=cache_dir, verbose=False)
    seconds = time.perf_counter() - start
    assert ok.all(), f"{int((~ok).sum())} texts were not embedded"
    return seconds, feats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=512, help="real tweets to embed (distinct)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats; medians are reported")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    tuned = tune_allocator()  # first: both sides then run under the same allocator settings
    bs = args.batch_size
    pool = sample_tweets(args.texts + bs)
    warm_texts, texts = pool[:bs], pool[bs:]
    bb = create_backbone("minilm_l6", modality="text").eval()
    bb.to("cuda" if torch.cuda.is_available() else "cpu")  # the device embed picks
    batches, warm_batches = tokenize(bb, texts, bs), tokenize(bb, warm_texts, bs)
    n, tokens = len(texts), int(sum(int(b["attention_mask"].sum()) for b in batches))
    times: dict[str, list[float]] = {"bare": [], "cold": [], "warm": []}
    same = True
    with tempfile.TemporaryDirectory(prefix="headstart-bench-text-") as tmp:
        bare_loop(bb, warm_batches)  # the same warm-up batch for both sides, cache kept apart
        ours(bb, warm_texts, bs, os.path.join(tmp, "cache-warmup"))
        for r in range(args.repeats):  # interleaved, so drift in machine speed hits both sides alike
            t_bare, ref = bare_loop(bb, batches)
            cache_dir = os.path.join(tmp, f"cache-{r}")  # a fresh, empty cache for every cold run
            t_cold, cold = ours(bb, texts, bs, cache_dir)
            t_warm, warm = ours(bb, texts, bs, cache_dir)
            same &= bool(np.allclose(warm, cold) and np.allclose(cold, ref.numpy(), atol=1e-4))
            for key, t in zip(times, (t_bare, t_cold, t_warm)):
                times[key].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    cold_ratio, warm_speedup = med["bare"] / med["cold"], med["cold"] / med["warm"]
    cold_ok = cold_ratio >= COLD_TARGET
    mark = {True: "PASS", False: "FAIL"}
    print(f"minilm_l6 (all-MiniLM-L6-v2): {n} real tweets, {tokens / n:.1f} tokens each on average, batch {bs}, "
          f"median of {args.repeats} run(s)")
    print(f"device {next(bb.parameters()).device.type}, torch threads {torch.get_num_threads()}, "
          f"cpu count {os.cpu_count()}, allocator tuned {tuned}")
    print(f"{'':<22}{'texts/s':>10}{'seconds':>10}")
    labels = {"bare": "bare forward loop", "cold": "ours, cold cache", "warm": "ours, warm cache"}
    for key, label in labels.items():
        print(f"{label:<22}{n / med[key]:>10.1f}{med[key]:>10.3f}")
    print(f"cold / bare     {cold_ratio:8.3f}   target >= {COLD_TARGET}   {mark[cold_ok]}")
    print(f"warm speed-up   {warm_speedup:7.1f}x   (cache hit vs cold run)")
    print(f"features: warm == cold == bare loop: {same}")
    if args.json:
        result = {"texts": n, "mean_tokens": tokens / n, "batch_size": bs, "repeats": args.repeats,
                  "device": next(bb.parameters()).device.type, "torch_threads": torch.get_num_threads(),
                  "cpu_count": os.cpu_count(), "allocator_tuned": tuned,
                  "seconds": times, "texts_per_s": {k: n / v for k, v in med.items()},
                  "cold_over_bare": cold_ratio, "warm_speedup": warm_speedup, "cold_pass": cold_ok,
                  "features_match": same}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
