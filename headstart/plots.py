"""The plots of a run: learning curves, confusion matrix, calibration. PNG files, drawn without a display."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_learning_curves(history: list[dict], path: str) -> str:
    """Train and validation loss per epoch across stages, validation accuracy on a second axis. A record without a
    number leaves a gap (NaN): setfit's passes have no validation loss, its solved head no loss at all."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    x = np.arange(1, len(history) + 1)
    ax.plot(x, [r.get("train_loss", np.nan) for r in history], "o-", label="train loss")
    ax.plot(x, [r.get("val_loss", np.nan) for r in history], "s-", label="validation loss")
    ax.set_xlabel("epoch (all stages)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    stages = [r["stage"] for r in history]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            ax.axvline(i + 0.5, color="grey", ls="--", lw=1)
            ax.text(i + 0.6, ax.get_ylim()[1], stages[i], va="top", fontsize=8, color="grey")
    if any("val_accuracy" in r for r in history):
        ax2 = ax.twinx()
        accuracy = [r.get("val_accuracy", np.nan) for r in history]
        ax2.plot(x, accuracy, "^-", color="tab:green", label="validation accuracy")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title("learning curves")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_confusion(matrix: list[list[int]], classes: list[str], path: str) -> str:
    cm = np.asarray(matrix, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title("confusion matrix (validation)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_calibration(y_true: np.ndarray, proba: np.ndarray, path: str, bins: int = 10) -> str:
    """Reliability diagram: accuracy against confidence per bin (the diagonal is perfect calibration), with how
    many predictions fall in each bin below it."""
    confidence, correct = proba.max(axis=1), proba.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    accuracy = np.array([correct[which == b].mean() if counts[b] else np.nan for b in range(bins)])
    centres = (edges[:-1] + edges[1:]) / 2
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 5.5), dpi=110, sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfectly calibrated")
    ax.bar(centres, np.nan_to_num(accuracy), width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title("calibration (validation)")
    hist.bar(centres, counts, width=1 / bins, color="tab:grey", edgecolor="black")
    hist.set_xlabel("confidence (highest probability)")
    hist.set_ylabel("predictions")
    hist.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
