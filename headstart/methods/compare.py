"""`hs.compare` / `headstart compare`: transfer learning's central claim, shown on the user's own data.

The same architecture trained from scratch and transferred (each strategy asked for), at several training-set
sizes (a learning curve), all scored on one held-out test set, with wall time for each, a plot of accuracy against
examples per class, and the training vs validation loss of each method at the largest size (where training from
scratch overfits, the gap shows).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import numpy as np

from ..data.detect import detect_modality
from ..data.labeled import LabeledData, stratified_split
from ..estimator import estimator_class
from ..modalities import MODALITIES
from ..progress import say

SCRATCH = "scratch"


def _per_class_subset(data: LabeledData, per_class: int | None, seed: int) -> LabeledData:
    if per_class is None:
        return data
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(data.targets == c))[:per_class] for c in range(len(data.classes))]
    return data.subset(np.sort(np.concatenate(picks)))


def compare(data, strategies: Sequence[str] = ("features", "two-stage"), sizes: Sequence[int | None] = (10, 30, 100),
            test=None, modality: str | None = None, backbone: str | None = None, epochs: int = 3,
            scratch_epochs: int = 6, image_size: int | None = None, test_fraction: float = 0.2, seed: int = 0,
            out_dir: str | None = None, verbose: bool = True, pretrained: bool = True,
            augment: bool = True) -> list[dict]:
    """One row per (training size, method): test accuracy, macro-F1, wall time, and the loss curves.

    `pretrained=False` runs the transfer methods from random weights too (a plumbing check, not a comparison).
    `augment=False` trains every method on the plain images: the textbook setting in which a from-scratch
    network memorises a small training set (headstart's light augmentation delays that).
    """
    modality = modality or detect_modality(os.fspath(data))
    load = MODALITIES[modality].load
    full = load(data, "classification", False, {})
    if test is None:
        train_idx, test_idx = stratified_split(full, test_fraction, seed)
        pool, held_out = full.subset(train_idx), full.subset(test_idx)
    else:
        pool, held_out = full, load(test, "classification", False, {})
    smallest = min(pool.class_counts().values())
    sizes = sorted({min(s, smallest) if s is not None else smallest for s in sizes})
    cls = estimator_class(modality, "classification")
    common = dict(backbone=backbone, image_size=image_size, seed=seed, verbose=False, val_fraction=0.25,
                  augment=augment)
    methods = {s: dict(strategy=s, epochs=epochs, pretrained=pretrained) for s in strategies}
    methods[SCRATCH] = dict(strategy="full", pretrained=False, epochs=scratch_epochs, lr=3e-3, patience=scratch_epochs)
    rows = []
    for per_class in sizes:
        train = _per_class_subset(pool, per_class, seed)
        for name, params in methods.items():
            say(verbose, f"compare: {name} with {per_class} examples per class ({len(train)} in all)")
            started = time.perf_counter()
            model = cls(**common, **params).fit(train)
            metrics = model.evaluate(held_out)
            rows.append({"per_class": per_class, "method": name, "accuracy": metrics["accuracy"],
                         "macro_f1": metrics["macro_f1"], "seconds": round(time.perf_counter() - started, 2),
                         "history": model.history_})
    if out_dir:
        write_comparison(out_dir, rows, len(full.classes))
    return rows


def write_comparison(folder: str, rows: list[dict], n_classes: int) -> dict[str, str]:
    """`comparison.json`, `comparison.png` (accuracy vs size), `overfitting.png` (loss curves, largest size) and
    `report/index.html` holding the table and both plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    paths = {"json": os.path.join(folder, "comparison.json"), "curve": os.path.join(folder, "comparison.png"),
             "overfitting": os.path.join(folder, "overfitting.png")}
    with open(paths["json"], "w") as f:
        json.dump(rows, f, indent=1)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    for m in methods:
        pts = [(r["per_class"], r["accuracy"]) for r in rows if r["method"] == m]
        ax.plot(*zip(*pts), marker="o", label=m, ls="--" if m == SCRATCH else "-")
    ax.axhline(1 / n_classes, color="grey", lw=1, ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("training examples per class")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("transfer vs from scratch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["curve"])
    plt.close(fig)
    largest = max(r["per_class"] for r in rows)
    last = [r for r in rows if r["per_class"] == largest]
    fig, axes = plt.subplots(1, len(last), figsize=(3.2 * len(last), 3), dpi=110, sharey=True, squeeze=False)
    for ax, r in zip(axes[0], last):
        x = np.arange(1, len(r["history"]) + 1)
        ax.plot(x, [h["train_loss"] for h in r["history"]], "o-", label="train")
        ax.plot(x, [h["val_loss"] for h in r["history"]], "s-", label="validation")
        ax.set_title(r["method"])
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("loss")
    axes[0][0].legend()
    fig.suptitle(f"train vs validation loss, {largest} examples per class")
    fig.tight_layout()
    fig.savefig(paths["overfitting"])
    plt.close(fig)
    from ..report import RunReport, write_report  # matplotlib (plots.py) loads only when a comparison is drawn

    paths["report"] = write_report(os.path.join(folder, "report"), RunReport(
        title=f"transfer vs from scratch, {n_classes} classes", comparison=rows,
        extra_pngs=[paths["curve"], paths["overfitting"]]))
    return paths
