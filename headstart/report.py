"""The run report: one self-contained HTML page (`report/index.html`) with the PNGs beside it.

Everything is embedded (plots and thumbnails as data URIs, styles inline, no scripts), so the page opens
anywhere, offline, and can be mailed as one file. Sections: data (classes, imbalance, duplicates, skipped
files), the strategy and why, validation metrics, learning curves, confusion matrix, calibration, the
worst-classified examples, and the transfer-vs-scratch table when `compare` was run.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .plots import plot_calibration, plot_confusion, plot_learning_curves

WORST_SHOWN = 12
THUMBNAIL = 112
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:10px}"
         ".card{border:1px solid #ddd;padding:6px;width:230px;font-size:13px}.card img{display:block;margin:auto}"
         ".warn{color:#a40}img.plot{max-width:100%}")


@dataclass
class RunReport:
    """What one run's page shows; fields left empty leave their section out."""

    title: str
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    worst: list[dict] = field(default_factory=list)
    calibration: tuple[np.ndarray, np.ndarray] | None = None  # (true class indices, probabilities)
    comparison: list[dict] = field(default_factory=list)
    extra_pngs: list[str] = field(default_factory=list)


def worst_examples(items: Sequence, targets: np.ndarray, proba: np.ndarray, classes: list[str], modality: str,
                   k: int = WORST_SHOWN) -> list[dict]:
    """The k validation examples given the lowest probability for their true class, each with a thumbnail (images)
    or a snippet (texts)."""
    p_true = proba[np.arange(len(targets)), targets]
    rows = []
    for i in np.argsort(p_true)[:k]:
        row = {"true": classes[targets[i]], "predicted": classes[int(proba[i].argmax())], "p_true": float(p_true[i]),
               "item": str(items[i]) if modality != "text" else None}
        if modality == "text":
            text = str(items[i])
            row["snippet"] = text[:300] + ("..." if len(text) > 300 else "")
        else:
            row["thumbnail"] = _thumbnail(items[i])
        rows.append(row)
    return rows


def _thumbnail(path) -> str | None:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL, THUMBNAIL))
            if min(im.size) < 48:  # 28-px Fashion-MNIST and the like: scale up so the eye can read them
                im = im.resize((im.width * 3, im.height * 3), Image.NEAREST)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _png(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<p><img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _data_section(data: dict) -> str:
    if not data:
        return ""
    out = [f"<h2>data</h2><p>{data.get('train', 0)} training and {data.get('validation', 0)} validation examples"]
    if data.get("imbalance"):
        out.append(f"; imbalance (largest class / smallest) {data['imbalance']:g}"
                   + (" <span class='warn'>(strong: consider class weights or more data)</span>"
                      if data["imbalance"] >= 3 else ""))
    out.append(".</p>")
    if data.get("class_counts"):
        out.append(_table(["class", "examples"], sorted(data["class_counts"].items())))
    dup = data.get("duplicates") or {}
    if dup.get("groups"):
        out.append(f"<p class='warn'>{dup['groups']} groups of identical inputs ({dup['extra_copies']} extra copies): "
                   f"{dup['across_train_validation']} straddle training and validation (they inflate the validation "
                   f"score), {dup['conflicting_labels']} carry conflicting labels.</p>")
        out.append(_table(["identical inputs", "labels"],
                          [("; ".join(g["inputs"]), ", ".join(g["labels"])) for g in dup["listed"]]))
    elif dup:
        out.append("<p>No duplicate inputs found.</p>")
    skipped = data.get("skipped") or []
    out.append(f"<p>{len(skipped)} input(s) skipped as unreadable.</p>")
    if skipped:
        out.append(_table(["skipped", "why"], [(s["path"], s["reason"]) for s in skipped[:50]]))
    return "".join(out)


def _metrics_section(metrics: dict, classes: list[str]) -> str:
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = ["<h2>validation metrics</h2>", _table(["metric", "value"], scalars)]
    per_class = metrics.get("per_class")
    if per_class:
        out.append(_table(["class", "precision", "recall", "F1", "support"],
                          [(c, v["precision"], v["recall"], v["f1"], v["support"]) for c, v in per_class.items()]))
    return "".join(out)


def _worst_section(worst: list[dict]) -> str:
    if not worst:
        return ""
    cards = []
    for w in worst:
        body = (f'<img alt="{html.escape(w.get("item") or "")}" src="{w["thumbnail"]}">' if w.get("thumbnail")
                else f"<p>{html.escape(w.get('snippet') or w.get('item') or '')}</p>")
        cards.append(f"<div class='card'>{body}<div>true <b>{html.escape(w['true'])}</b>, predicted "
                     f"<b>{html.escape(w['predicted'])}</b>, p(true) {w['p_true']:.3f}</div>"
                     + (f"<div style='font-size:11px;color:#666'>{html.escape(w['item'])}</div>"
                        if w.get("item") else "") + "</div>")
    return ("<h2>worst-classified validation examples</h2><p>lowest probability given to the true class first</p>"
            f"<div class='grid'>{''.join(cards)}</div>")


def _comparison_section(rows: list[dict]) -> str:
    if not rows:
        return ""
    return ("<h2>transfer vs from scratch</h2>"
            + _table(["examples per class", "method", "test accuracy", "macro-F1", "seconds"],
                     [(r["per_class"], r["method"], r["accuracy"], r["macro_f1"], r["seconds"]) for r in rows]))


def write_report(folder: str, run: RunReport) -> str:
    """Write the PNGs and `index.html` into `folder`; returns the page's path."""
    os.makedirs(folder, exist_ok=True)
    plots = []
    if run.history:
        curves = plot_learning_curves(run.history, os.path.join(folder, "learning_curves.png"))
        plots.append(("learning curves", curves))
    if "confusion_matrix" in run.metrics:
        plots.append(("confusion matrix", plot_confusion(run.metrics["confusion_matrix"], run.classes,
                                                         os.path.join(folder, "confusion_matrix.png"))))
    if run.calibration is not None and len(run.calibration[0]):
        plots.append(("calibration", plot_calibration(*run.calibration, os.path.join(folder, "calibration.png"))))
    plots += [(os.path.basename(p), p) for p in run.extra_pngs]
    reasons = ("<h2>why this strategy</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in run.reasons)
               + "</ul>") if run.reasons else ""
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>headstart report: "
            f"{html.escape(run.title)}</title><style>{STYLE}</style></head><body><h1>headstart report</h1>"
            f"<p>{html.escape(run.title)}</p>" + _data_section(run.data) + reasons
            + (_metrics_section(run.metrics, run.classes) if run.metrics else "")
            + "".join(f"<h2>{html.escape(name)}</h2>{_png(path, name)}" for name, path in plots)
            + _worst_section(run.worst) + _comparison_section(run.comparison) + "</body></html>")
    index = os.path.join(folder, "index.html")
    tmp = index + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, index)  # a reader never sees half a page
    return index
