"""Domain adaptation on a real shift: train on Fashion-MNIST as photographed, test on a shifted copy.

The target domains are built from the *test* split only (inverted, low-contrast or rotated copies), split into
three disjoint parts per class: unlabeled target images for adaptation, a labeled target set for the oracle, and
the target images every method is scored on. Rows, per shift, all in one process with the same backbone:

* source-only: the head trained on source features (strategy `features`), no target data;
* adabn / coral / dann: `fit(source, unlabeled=target_pool)` with `adapt=` that method;
* oracle: the same model trained on labeled target images (the ceiling adaptation tries to reach).

Ratios are accuracy over source-only's. Tweets are not benchmarked: the bundled corpus has sentiment labels but
no topic field to split domains on (a split by keyword would be a shift we made up, not one users meet).

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python bench/domain_shift.py
    ... --per-class 30 --target-per-class 30 --eval-per-class 30 --image-size 96 --dann-epochs 1   # reduced
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from headstart._allocator import tune_allocator  # noqa: E402

tune_allocator()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import headstart as hs  # noqa: E402
from headstart.data import fashion_mnist  # noqa: E402

SHIFTS = {
    "inverted": lambda x: 255 - x,
    "low-contrast": lambda x: (96 + x.astype(np.float32) * 0.25).astype(np.uint8),
    "rotated": lambda x: np.rot90(x, k=1).copy(),
}


def write_images(dest: str, images: np.ndarray, labels: np.ndarray | None, prefix: str) -> str:
    for i, (img, y) in enumerate(zip(images, labels if labels is not None else [None] * len(images))):
        folder = os.path.join(dest, fashion_mnist.CLASSES[y]) if y is not None else dest
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(img).save(os.path.join(folder, f"{prefix}-{i:05d}.png"))
    return dest


def target_parts(per_class: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint indices into the test split, per part, stratified by class."""
    _, y = fashion_mnist.load_split("test")
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {name: [] for name in per_class}
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for name, n in per_class.items():
            parts[name].append(rows[start:start + n])
            start += n
    return {name: np.sort(np.concatenate(v)) for name, v in parts.items()}


def score(train: str, scored: str, params: dict, unlabeled: str | None = None) -> dict:
    """Fit on `train` (adapting to `unlabeled` when given), then accuracy on the scored target images."""
    t = time.perf_counter()
    clf = hs.ImageClassifier(strategy="features", **params).fit(train, unlabeled=unlabeled)
    acc = clf.evaluate(scored)["accuracy"]
    return {"target_accuracy": round(acc, 4), "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100, help="labeled source (train split) images per class")
    ap.add_argument("--target-per-class", type=int, default=100, help="unlabeled target images per class")
    ap.add_argument("--eval-per-class", type=int, default=100, help="target images per class scored")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--shifts", default=",".join(SHIFTS))
    ap.add_argument("--methods", default="adabn,coral,dann")
    ap.add_argument("--dann-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "domain_shift.json"))
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    root = tempfile.mkdtemp(prefix="domain-shift-")
    os.environ.setdefault("HEADSTART_CACHE", os.path.join(root, "cache"))
    source = fashion_mnist.export_subset(os.path.join(root, "source"), "train", args.per_class, seed=args.seed)
    x_test, y_test = fashion_mnist.load_split("test")
    parts = target_parts({"pool": args.target_per_class, "oracle": args.per_class, "eval": args.eval_per_class},
                         args.seed + 1)
    common = dict(backbone="efficientnet_lite0", image_size=args.image_size, verbose=False, seed=args.seed)
    results = {"config": vars(args), "load_average_1min": os.getloadavg()[0], "shifts": {}}
    print(f"source: {args.per_class}/class from the train split; target from the test split: "
          f"{args.target_per_class}/class unlabeled, {args.per_class}/class oracle labels, "
          f"{args.eval_per_class}/class scored; {args.image_size} px")
    for shift in [s for s in args.shifts.split(",") if s]:
        make = SHIFTS[shift]
        shifted = np.stack([make(img) for img in x_test])
        base = os.path.join(root, shift)
        pool = write_images(os.path.join(base, "pool"), shifted[parts["pool"]], None, "pool")
        oracle = write_images(os.path.join(base, "oracle"), shifted[parts["oracle"]], y_test[parts["oracle"]], "o")
        scored = write_images(os.path.join(base, "eval"), shifted[parts["eval"]], y_test[parts["eval"]], "e")
        rows = {"source-only": score(source, scored, common)}
        for m in methods:
            rows[m] = score(source, scored, {**common, "adapt": m, "epochs": args.dann_epochs}, unlabeled=pool)
        rows["oracle"] = score(oracle, scored, common)
        base_acc = rows["source-only"]["target_accuracy"]
        for r in rows.values():
            r["ratio_vs_source_only"] = round(r["target_accuracy"] / max(base_acc, 1e-9), 3)
        results["shifts"][shift] = rows
        print(f"\n{shift}: accuracy on the target domain ({args.eval_per_class * 10} images)")
        print(f"  {'method':<12} {'accuracy':>8} {'x source-only':>13} {'seconds':>8}")
        for name, r in rows.items():
            print(f"  {name:<12} {r['target_accuracy']:>8.3f} {r['ratio_vs_source_only']:>13.2f} {r['seconds']:>8.1f}")
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as f:  # after every shift: a long run stopped early keeps what it measured
            json.dump(results, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
