"""Benchmark: does self-supervised pre-training on unlabeled in-domain data help fine-tuning on few labels?

Images: a small timm backbone (default resnet18 at 32 px, random initialisation) pre-trained with SimCLR
(`headstart.methods.pretrain`) on unlabeled Fashion-MNIST training images, then trained on `--per-class` labeled images
per class; against the same architecture from random initialisation given the same labels and the same training.
Both are scored twice: a linear probe on frozen features (strategy `features`) and full fine-tuning (`full`).

Texts: the packaged all-MiniLM-L6-v2 after masked-LM domain-adaptive pre-training on unlabeled tweets (none of
them in the labeled or test sets), against plain MiniLM, both fine-tuned (`full`) on the same few labeled tweets.

Run: .venv/bin/python bench/pretrain.py [--skip-images] [--skip-text] [--unlabeled 20000] [--ssl-epochs 20]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

import headstart as hs
from headstart._allocator import tune_allocator
from headstart.data.fashion_mnist import export_subset, load_split
from headstart.methods.pretrain import PretrainSettings, pretrain

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "pretrain.json")


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"


def _accuracy(clf, test) -> float:
    return float(clf.evaluate(test)["accuracy"])


def image_part(args, tmp: str) -> dict:
    x, _ = load_split("train")
    rng = np.random.default_rng(args.seed)
    pool = os.path.join(tmp, "unlabeled")
    os.makedirs(pool, exist_ok=True)
    for i in rng.choice(len(x), args.unlabeled, replace=False):
        Image.fromarray(x[i]).save(os.path.join(pool, f"{i:05d}.png"))
    train = export_subset(os.path.join(tmp, "labeled"), "train", args.per_class, seed=args.seed + 1)
    test = export_subset(os.path.join(tmp, "test"), "test", args.test_per_class, seed=args.seed + 2)
    start = time.perf_counter()
    settings = PretrainSettings(epochs=args.ssl_epochs, batch_size=args.ssl_batch, image_size=args.image_size,
                                num_workers=args.workers, seed=args.seed)
    ssl = pretrain(pool, args.arch, os.path.join(tmp, "ssl"), "image", settings, pretrained=False,
                   verbose=args.verbose)
    ssl_seconds = time.perf_counter() - start
    common = dict(image_size=args.image_size, batch_size=64, num_workers=args.workers, verbose=args.verbose,
                  seed=args.seed, epochs=args.epochs, head_epochs=args.head_epochs, patience=args.epochs)
    rows = {}
    for strategy in ("features", "full"):
        for name, kw in (("random init", dict(backbone=args.arch, pretrained=False)),
                         ("SimCLR", dict(backbone=ssl, pretrained=True))):
            t = time.perf_counter()
            clf = hs.ImageClassifier(strategy=strategy, **kw, **common).fit(train)
            rows[f"{strategy} / {name}"] = {"accuracy": _accuracy(clf, test),
                                            "seconds": round(time.perf_counter() - t, 1)}
    return {"device": _device(), "args": vars(args),
            "arch": args.arch, "image_size": args.image_size, "unlabeled": args.unlabeled,
            "ssl_epochs": args.ssl_epochs, "ssl_batch": args.ssl_batch, "ssl_seconds": round(ssl_seconds, 1),
            "labeled_per_class": args.per_class, "test_images": 10 * args.test_per_class, "results": rows}


def text_part(args, tmp: str) -> dict:
    from headstart.data.tweets import export_split, load_tweets

    train, test, _ = export_split(os.path.join(tmp, "tweets"), per_class_train=args.text_per_class,
                                  test_size=args.text_test, seed=args.seed)
    held = set()
    for path in (train, test):
        with open(path, newline="", encoding="utf-8") as f:
            held.update(row["text"] for row in csv.DictReader(f))
    unlabeled = [t for t in load_tweets()[0] if t not in held]
    unlabeled = list(np.random.default_rng(args.seed).permutation(unlabeled)[: args.text_unlabeled])
    start = time.perf_counter()
    settings = PretrainSettings(epochs=args.mlm_epochs, batch_size=32, max_length=64, seed=args.seed)
    dapt = pretrain(unlabeled, "minilm_l6", os.path.join(tmp, "dapt"), "text", settings, verbose=args.verbose)
    mlm_seconds = time.perf_counter() - start
    rows = {}
    for name, backbone in (("plain MiniLM", "minilm_l6"), ("MiniLM + DAPT", dapt)):
        t = time.perf_counter()
        clf = hs.TextClassifier(backbone=backbone, strategy="full", epochs=args.text_epochs, batch_size=16,
                                seed=args.seed, verbose=args.verbose, patience=args.text_epochs).fit(train)
        rows[name] = {"accuracy": _accuracy(clf, test), "seconds": round(time.perf_counter() - t, 1)}
    return {"device": _device(), "args": vars(args),
            "unlabeled": len(unlabeled), "mlm_epochs": args.mlm_epochs, "mlm_seconds": round(mlm_seconds, 1),
            "mlm_head": "initialised fresh (the packaged sentence encoder has none)",
            "labeled_per_class": args.text_per_class, "test_texts": args.text_test, "results": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="timm:resnet18")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--unlabeled", type=int, default=20000, help="unlabeled Fashion-MNIST training images")
    ap.add_argument("--ssl-epochs", type=int, default=20)
    ap.add_argument("--ssl-batch", type=int, default=256)
    ap.add_argument("--per-class", type=int, default=100, help="labeled images per class")
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs (strategy full)")
    ap.add_argument("--head-epochs", type=int, default=60)
    ap.add_argument("--workers", type=int, default=0, help="data loading processes")
    ap.add_argument("--text-unlabeled", type=int, default=2000)
    ap.add_argument("--mlm-epochs", type=int, default=1)
    ap.add_argument("--text-per-class", type=int, default=50)
    ap.add_argument("--text-test", type=int, default=600)
    ap.add_argument("--text-epochs", type=int, default=3)
    ap.add_argument("--skip-images", action="store_true")
    ap.add_argument("--skip-text", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--json", default=RESULTS)
    args = ap.parse_args()
    tune_allocator()
    out: dict = {}
    if os.path.exists(args.json):  # parts run on different machines are kept side by side
        with open(args.json) as f:
            out = json.load(f)
    with tempfile.TemporaryDirectory(prefix="headstart-pretrain-") as tmp:
        if not args.skip_images:
            out["images"] = image_part(args, tmp)
        if not args.skip_text:
            out["text"] = text_part(args, tmp)
    for part in ("images", "text"):
        if part in out:
            rows = out[part]["results"]
            print(f"{part}: " + json.dumps({k: v for k, v in out[part].items() if k not in ("results", "args")}))
            base = next(iter(rows.values()))["accuracy"]
            for name, r in rows.items():
                print(f"  {name:<28} accuracy {r['accuracy']:.3f}   ({r['seconds']:.0f} s)")
            if part == "images":
                for s in ("features", "full"):
                    ratio = rows[f"{s} / SimCLR"]["accuracy"] / rows[f"{s} / random init"]["accuracy"]
                    print(f"  {s}: SimCLR / random init = {ratio:.2f}")
            else:
                print(f"  DAPT / plain = {rows['MiniLM + DAPT']['accuracy'] / base:.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
