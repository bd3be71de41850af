"""Which modality a data path holds (images or texts), read from its files or its table's header."""

from __future__ import annotations

import csv
import json
import os

from .texts import TABLE_SUFFIXES

# A first line longer than this (1 MiB) is no header: a file with no newline in sight (a 2 GB one-line file)
# must not be read whole just to find column names.
_HEADER_BYTES = 1 << 20


def detect_modality(data: str, input_col: str | None = None) -> str:
    """'text' or 'image', from what the data holds: .txt files per class, or a table's text/path column."""
    if os.path.isdir(data):
        for _, _, files in os.walk(data):
            visible = [f for f in files if not f.startswith(".")]
            if visible:
                return "text" if all(f.endswith(".txt") for f in visible) else "image"
        return "image"
    suffix = os.path.splitext(data)[1].lower()
    if suffix not in TABLE_SUFFIXES or not os.path.isfile(data):  # never open a pipe: the loader names it
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
            first = f.readline(_HEADER_BYTES).decode("utf-8", errors="replace")
        if suffix == ".jsonl":
            return list(json.loads(first)) if first.strip() else []
        return next(csv.reader([first.lstrip("\ufeff")]), [])
    except (OSError, ValueError):
        return []  # unreadable: the loader will name the problem
