"""The run report: learning curves and a confusion matrix as PNGs, and one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_learning_curves(history: list[dict], path: str) -> str:
    """Train and validation loss per epoch across stages, validation accuracy on a second axis."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    x = np.arange(1, len(history) + 1)
    ax.plot(x, [r["train_loss"] for r in history], "o-", label="train loss")
    ax.plot(x, [r["val_loss"] for r in history], "s-", label="validation loss")
    ax.set_xlabel("epoch (all stages)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    stages = [r["stage"] for r in history]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            ax.axvline(i + 0.5, color="grey", ls="--", lw=1)
            ax.text(i + 0.6, ax.get_ylim()[1], stages[i], va="top", fontsize=8, color="grey")
    if history and "val_accuracy" in history[0]:
        ax2 = ax.twinx()
        ax2.plot(x, [r["val_accuracy"] for r in history], "^-", color="tab:green", label="validation accuracy")
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


def _img(path: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img alt="{html.escape(os.path.basename(path))}" src="data:image/png;base64,{data}">'


def write_report(folder: str, history: list[dict], metrics: dict, classes: list[str], title: str = "",
                 notes: list[str] | None = None) -> str:
    """PNGs plus `index.html` (images embedded, so the page opens anywhere with no network)."""
    os.makedirs(folder, exist_ok=True)
    pngs = [plot_learning_curves(history, os.path.join(folder, "learning_curves.png"))] if history else []
    if "confusion_matrix" in metrics:
        pngs.append(plot_confusion(metrics["confusion_matrix"], classes, os.path.join(folder, "confusion_matrix.png")))
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in metrics.items()
                   if isinstance(v, float))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>headstart report</title></head><body>"
            f"<h1>headstart report</h1><p>{html.escape(title)}</p>"
            + ("<h2>why this strategy</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
               if notes else "")
            + "<h2>validation metrics</h2>"
            f"<table>{rows}</table>" + "".join(f"<p>{_img(p)}</p>" for p in pngs) + "</body></html>")
    index = os.path.join(folder, "index.html")
    with open(index, "w", encoding="utf-8") as f:
        f.write(page)
    return index
