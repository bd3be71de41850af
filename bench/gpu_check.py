"""The CUDA path, checked on a real GPU: device placement, mixed precision, and speed against full precision.

Runs full fine-tuning of the packaged EfficientNet-Lite0 on Fashion-MNIST in each precision (same seed, same
split), checks where the weights and the features live, that a bundle saved from a GPU run reloads and predicts
the same, and prints throughput ratios against the fp32 run of the same process.

    python bench/gpu_check.py --per-class 100 --epochs 2 --out bench/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import headstart as hs  # noqa: E402
from headstart.data import fashion_mnist  # noqa: E402
from headstart.inference import embed  # noqa: E402


def fit_once(train: str, test: str, precision: str, args) -> dict:
    clf = hs.ImageClassifier(backbone="efficientnet_lite0", strategy="full", epochs=args.epochs, batch_size=args.batch,
                             image_size=args.size, mixed_precision=precision, num_workers=args.workers,
                             verbose=False, seed=0)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    start = time.perf_counter()
    clf.fit(train)
    seconds = time.perf_counter() - start
    device = str(next(clf.model_.parameters()).device)
    train_rates = [r["samples_per_s"] for r in clf.history_ if r["stage"] != "head"]
    metrics = clf.evaluate(test)
    with tempfile.TemporaryDirectory() as tmp:
        path = clf.save(os.path.join(tmp, "model.hs"))
        again = hs.load(path)
        items = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(test) for f in fs)[:64]
        diff = float(np.abs(clf.predict_proba(items) - again.predict_proba(items)).max())
    return {"precision": precision, "fit_seconds": round(seconds, 1), "device_after_fit": device,
            "train_images_per_s": max(train_rates) if train_rates else None,
            "test_accuracy": round(metrics["accuracy"], 4), "reload_max_prob_diff": diff,
            "stages": [r["stage"] for r in clf.history_]}


def inference_rate(test: str, args) -> dict:
    backbone = hs.create_backbone("efficientnet_lite0", image_size=args.size)
    items = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(test) for f in fs)
    out = {}
    for workers in (0, args.workers):
        start = time.perf_counter()
        feats, ok = embed(backbone, items, batch_size=128, num_workers=workers, use_cache=False, verbose=False)
        out[f"workers_{workers}"] = round(len(items) / (time.perf_counter() - start), 1)
    out["feature_device"] = str(next(backbone.parameters()).device)
    # the bare loop: preprocessed tensors already on the GPU, no data loading at all
    x = torch.randn(128, 3, args.size, args.size, device="cuda" if torch.cuda.is_available() else "cpu")
    model = backbone.to(x.device).eval()
    with torch.inference_mode():
        model(x)
        torch.cuda.synchronize() if x.is_cuda else None
        start = time.perf_counter()
        for _ in range(10):
            model(x)
        torch.cuda.synchronize() if x.is_cuda else None
    out["bare_forward_per_s"] = round(1280 / (time.perf_counter() - start), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--precisions", default="no,bf16,fp16,auto")
    ap.add_argument("--out", default="bench/results/gpu_check.json")
    args = ap.parse_args()
    root = tempfile.mkdtemp()
    train = fashion_mnist.export_subset(os.path.join(root, "train"), "train", args.per_class, seed=0)
    test = fashion_mnist.export_subset(os.path.join(root, "test"), "test", args.test_per_class, seed=1)
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "args": vars(args), "runs": []}
    for precision in args.precisions.split(","):
        run = fit_once(train, test, precision, args)
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
    base = result["runs"][0]
    for run in result["runs"][1:]:
        run["speed_vs_first"] = round(run["train_images_per_s"] / base["train_images_per_s"], 2)
        run["accuracy_diff_vs_first"] = round(run["test_accuracy"] - base["test_accuracy"], 4)
    result["inference"] = inference_rate(test, args)
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
