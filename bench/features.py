"""Benchmark: cached feature extraction end to end against a bare torch forward loop, in one run.

"Ours" is `headstart.inference.embed_images` (hash files, look up the cache, decode + resize + forward the
missing images in batches, write a cache shard). The baseline is `bb(batch)` in a plain inference-mode loop
over tensors decoded beforehand (not timed) with the same transform and batch size. Both sides run one
warm-up batch of other images first, under the same allocator settings. Targets: cold ours >= 0.9x the bare
loop; a second run over the same files (cache hit) >= 50x faster than the cold run.

Run: .venv/bin/python bench/features.py [--images 320] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from headstart._allocator import tune_allocator
from headstart.backbones import create_backbone
from headstart.data.fashion_mnist import export_subset
from headstart.data.images import eval_transform, list_image_files
from headstart.inference import embed_images

COLD_TARGET, WARM_TARGET = 0.9, 50.0


def decode(paths: Sequence[str], transform: nn.Module) -> torch.Tensor:
    def one(p: str) -> torch.Tensor:
        with Image.open(p) as img:
            return transform(img.convert("RGB"))

    return torch.stack([one(p) for p in paths])


def bare_loop(bb: nn.Module, x: torch.Tensor, batch_size: int) -> tuple[float, torch.Tensor]:
    device = next(bb.parameters()).device  # embed_images puts the model on the GPU when there is one
    start = time.perf_counter()
    with torch.inference_mode():
        out = [bb(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cat(out).cpu()


def ours(bb: nn.Module, paths: list[str], batch_size: int, cache_dir: str) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    feats, ok = embed_images(bb, paths, batch_size=batch_size, use_cache=True, cache_dir=cache_dir,
                             verbose=False)
    seconds = time.perf_counter() - start
    assert ok.all(), f"{int((~ok).sum())} images failed to decode"
    return seconds, feats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=320, help="total images (10 classes, N//10 each)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    tuned = tune_allocator()  # first: both sides then run under the same allocator settings
    bs = args.batch_size
    times: dict[str, list[float]] = {"bare": [], "cold": [], "warm": []}
    same = True
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as tmp:
        paths = list_image_files([export_subset(os.path.join(tmp, "img"), "test", max(1, args.images // 10))])
        warm_paths = list_image_files([export_subset(os.path.join(tmp, "warm"), "train", -(-bs // 10))])[:bs]
        bb = create_backbone("efficientnet_lite0", image_size=args.image_size).eval()
        bb.to("cuda" if torch.cuda.is_available() else "cpu")  # the device embed_images picks
        transform = eval_transform(bb.spec.preprocess)
        x, x_warm = decode(paths, transform), decode(warm_paths, transform)
        bare_loop(bb, x_warm, bs)  # the same warm-up batch for both sides, cache kept apart
        ours(bb, warm_paths, bs, os.path.join(tmp, "cache-warmup"))
        for r in range(args.repeats):  # interleaved, so drift in machine speed hits both sides alike
            t_bare, ref = bare_loop(bb, x, bs)
            cache_dir = os.path.join(tmp, f"cache-{r}")  # a fresh, empty cache for every cold run
            t_cold, cold = ours(bb, paths, bs, cache_dir)
            t_warm, warm = ours(bb, paths, bs, cache_dir)
            same &= np.allclose(warm, cold) and np.allclose(cold, ref.numpy(), atol=1e-4)
            for key, t in zip(times, (t_bare, t_cold, t_warm)):
                times[key].append(t)
    n = len(paths)
    med = {k: statistics.median(v) for k, v in times.items()}
    cold_ratio, warm_speedup = med["bare"] / med["cold"], med["cold"] / med["warm"]
    cold_ok, warm_ok = cold_ratio >= COLD_TARGET, warm_speedup >= WARM_TARGET
    mark = {True: "PASS", False: "FAIL"}
    print(f"efficientnet_lite0 @{args.image_size}px: {n} images, batch {bs}, median of {args.repeats} run(s)")
    print(f"device {next(bb.parameters()).device.type}, torch threads {torch.get_num_threads()}, "
          f"cpu count {os.cpu_count()}, 1-min load {os.getloadavg()[0]:.1f}, allocator tuned {tuned}")
    print(f"{'':<22}{'images/s':>10}{'seconds':>10}")
    labels = {"bare": "bare forward loop", "cold": "ours, cold cache", "warm": "ours, warm cache"}
    for key, label in labels.items():
        print(f"{label:<22}{n / med[key]:>10.1f}{med[key]:>10.3f}")
    print(f"cold / bare     {cold_ratio:8.3f}   target >= {COLD_TARGET}   {mark[cold_ok]}")
    print(f"warm speed-up   {warm_speedup:7.1f}x   target >= {WARM_TARGET:g}x   {mark[warm_ok]}")
    print(f"features: warm == cold == bare loop: {same}")
    if args.json:
        result = {"images": n, "image_size": args.image_size, "batch_size": bs, "repeats": args.repeats,
                  "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                  "allocator_tuned": tuned, "load_avg_1min": os.getloadavg()[0],
                  "seconds": times, "images_per_s": {k: n / v for k, v in med.items()},
                  "cold_over_bare": cold_ratio, "warm_speedup": warm_speedup, "cold_pass": cold_ok,
                  "warm_pass": warm_ok, "features_match": bool(same)}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
