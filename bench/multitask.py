"""Benchmark: one backbone with several heads (`hs.MultiTaskModel`) against one single-task model per label.

Fashion-MNIST (frozen EfficientNet-Lite0 features): `category` (the 10 classes) and `group` (clothing / footwear /
bags). Tweets (frozen packaged MiniLM): `sentiment` (negative / neutral / positive) and `stance` (opinionated /
neutral). Each table has the input column and both label columns; the single-task baselines train the same
trunk and head on one column, with the same epochs, so the ratio shows what sharing the trunk costs or gains.

Run: .venv/bin/python bench/multitask.py [--per-class 200] [--test-per-class 100] [--skip-text]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time

import headstart as hs
from headstart._allocator import tune_allocator
from headstart.data.fashion_mnist import export_subset
from headstart.data.images import list_image_files

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "multitask.json")
GROUP = {"tshirt_top": "clothing", "trouser": "clothing", "pullover": "clothing", "dress": "clothing",
         "coat": "clothing", "shirt": "clothing", "sandal": "footwear", "sneaker": "footwear",
         "ankle_boot": "footwear", "bag": "bags"}
STANCE = {"negative": "opinionated", "positive": "opinionated", "neutral": "neutral"}


def fashion_table(folder: str, path: str) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "category", "group"])
        for p in list_image_files([folder]):
            category = os.path.basename(os.path.dirname(p))
            w.writerow([p, category, GROUP[category]])
    return path


def tweet_table(source: str, path: str) -> str:
    with open(source, newline="", encoding="utf-8") as f, open(path, "w", newline="", encoding="utf-8") as g:
        w = csv.writer(g)
        w.writerow(["text", "sentiment", "stance"])
        for row in csv.DictReader(f):
            w.writerow([row["text"], row["label"], STANCE[row["label"]]])
    return path


def compare(train: str, test: str, tasks: dict[str, str], modality: str, args) -> dict:
    common = dict(modality=modality, epochs=args.epochs, seed=args.seed, verbose=False)
    start = time.perf_counter()
    multi = hs.MultiTaskModel(tasks=tasks, **common).fit(train).evaluate(test)
    rows = {"multi-task": {t: multi[t]["accuracy"] for t in tasks}, "seconds": round(time.perf_counter() - start, 1)}
    for name, kind in tasks.items():
        single = hs.MultiTaskModel(tasks={name: kind}, **common).fit(train).evaluate(test)
        rows[f"single-task {name}"] = single[name]["accuracy"]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--text-per-class", type=int, default=300)
    ap.add_argument("--text-test", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--skip-text", action="store_true")
    ap.add_argument("--skip-fashion", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=RESULTS)
    args = ap.parse_args()
    tune_allocator()
    out = {"args": vars(args)}
    if os.path.exists(args.json):  # parts run separately are kept side by side
        with open(args.json) as f:
            out = {**json.load(f), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="headstart-multitask-") as tmp:
        if not args.skip_fashion:
            train = fashion_table(export_subset(os.path.join(tmp, "train"), "train", args.per_class, seed=args.seed),
                                  os.path.join(tmp, "train.csv"))
            test = fashion_table(export_subset(os.path.join(tmp, "test"), "test", args.test_per_class,
                                               seed=args.seed + 1), os.path.join(tmp, "test.csv"))
            out["fashion"] = compare(train, test, {"category": "classification", "group": "classification"},
                                     "image", args)
        if not args.skip_text:
            from headstart.data.tweets import export_split

            tr, te, _ = export_split(os.path.join(tmp, "tweets"), args.text_per_class, args.text_test, args.seed)
            out["tweets"] = compare(tweet_table(tr, os.path.join(tmp, "tw-train.csv")),
                                    tweet_table(te, os.path.join(tmp, "tw-test.csv")),
                                    {"sentiment": "classification", "stance": "classification"}, "text", args)
    for part in ("fashion", "tweets"):
        if part in out:
            r = out[part]
            print(f"{part} ({r['seconds']:.0f} s for the multi-task fit):")
            for task, acc in r["multi-task"].items():
                single = r[f"single-task {task}"]
                print(f"  {task:<10} multi-task {acc:.3f}   single-task {single:.3f}   ratio {acc / single:.3f}")
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
