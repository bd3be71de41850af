"""Labeled texts from CSV, JSONL or Parquet (`text`,`label` columns, names configurable) or a folder of .txt
files per class. Unreadable rows are named: an error for labels, a counted skip for undecodable or empty texts
(`strict` makes those fatal too)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .labeled import (
    LabeledData,
    build_labeled,
    csv_dict_reader,
    csv_problem,
    load_source,
    parse_label,
    read_csv_rows,
    require_columns,
)

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _read_jsonl(path: str, columns: Sequence[str]) -> list[dict]:
    rows = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            text = _decode(raw)
            if text is None:
                raise DataError(f"{path}, line {line_no}: not UTF-8 text; save the file as UTF-8")
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {line_no}: invalid JSON ({err.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line_no}: expected a JSON object per line")
            row["__line__"] = line_no
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows; add one JSON object per line")
    require_columns(path, list(rows[0]), columns)
    return rows


def _read_parquet(path: str, columns: Sequence[str]) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({type(err).__name__}); re-export it") from None
    require_columns(path, table.column_names, columns)
    rows = table.select(list(columns)).to_pylist()
    for i, row in enumerate(rows, start=1):
        row["__line__"] = i
    return rows


def _read_csv_texts(path: str, columns: Sequence[str]) -> list[dict]:
    """CSV rows; a file that is not UTF-8 throughout has its bad rows counted rather than failing whole."""
    try:
        rows = read_csv_rows(path, columns)
        for line, row in enumerate(rows, start=2):
            row["__line__"] = line
        return rows
    except DataError as err:
        if "not UTF-8" not in str(err):
            raise
    import csv
    import io

    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="surrogateescape")
    reader = csv_dict_reader(io.StringIO(text.lstrip("\ufeff"), newline=""))  # as csv wants: newlines untouched
    try:
        rows = list(reader)
    except csv.Error as err:
        raise csv_problem(path, reader, err) from None
    require_columns(path, reader.fieldnames or [], columns)
    for line, row in enumerate(rows, start=2):
        row["__line__"] = line
    return rows


def _has_undecodable(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def read_text_table(path: str, task: str, text_col: str = "text", label_col: str = "label",
                    strict: bool = False) -> LabeledData:
    suffix = os.path.splitext(path)[1].lower()
    reader = {".csv": _read_csv_texts, ".jsonl": _read_jsonl, ".parquet": _read_parquet}[suffix]
    rows = reader(path, (text_col, label_col))
    texts, raw, skipped = [], [], []
    for row in rows:
        line = row["__line__"]
        value = row.get(text_col)
        text = "" if value is None else str(value)
        why = "undecodable bytes (not UTF-8)" if _has_undecodable(text) else "empty text" if not text.strip() else ""
        if why:
            if strict:
                raise DataError(f"{path}, line {line}: {why} in column '{text_col}'; fix or remove that row")
            skipped.append((f"{path}:{line}", why))
            continue
        raw.append(parse_label(row.get(label_col), task, path, line, label_col))
        texts.append(text)
    if not texts:
        raise DataError(f"{path}: no usable texts (first problem: {skipped[0][0]}: {skipped[0][1]})")
    return build_labeled(texts, raw, task, path, skipped, what="texts")


def read_text_file(path: str) -> str | None:
    """The file's text, or None when it is not UTF-8 or not a regular file (reading a pipe may never return)."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return _decode(f.read())


def scan_text_folder(root: str, strict: bool = False) -> LabeledData:
    """A folder with one sub-folder per class, each holding .txt files (one text per file)."""
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders; put each class's .txt files in {root}/<class name>/")
    texts, raw, skipped = [], [], []
    for c in classes:
        files = sorted(f for f in os.listdir(os.path.join(root, c)) if f.endswith(".txt") and not f.startswith("."))
        if not files:
            raise DataError(f"{os.path.join(root, c)}: class '{c}' has no .txt files; add texts or remove the folder")
        for name in files:
            path = os.path.join(root, c, name)
            text = read_text_file(path)
            why = ("not a regular file (a folder, pipe, socket or device)" if not os.path.isfile(path) else
                   "not UTF-8 text" if text is None else "empty text" if not text.strip() else "")
            if why:
                if strict:
                    raise DataError(f"{path}: {why}; fix or remove the file (or drop --strict to skip it)")
                skipped.append((path, why))
                continue
            texts.append(text)
            raw.append(c)
    data = build_labeled(texts, raw, "classification", root, skipped, what="texts")
    if data.classes != classes:
        missing = sorted(set(classes) - set(data.classes))
        raise DataError(f"{root}: class '{missing[0]}' has no readable texts; add texts or remove that class")
    return data


def load_texts(data, task: str = "classification", strict: bool = False, text_col: str = "text",
               label_col: str = "label") -> LabeledData:
    """A folder of .txt files per class, a CSV/JSONL/Parquet table, or already loaded data."""
    return load_source(data, task, lambda d: scan_text_folder(d, strict), TABLE_SUFFIXES,
                       lambda f: read_text_table(f, task, text_col, label_col, strict),
                       "a .csv, .jsonl or .parquet file with text,label columns, or a folder per class")


def list_texts(inputs: Sequence, text_col: str = "text") -> list[str]:
    """Texts to predict: strings as given; a .txt file is one text; a table gives its text column."""
    out: list[str] = []
    for item in inputs:
        if isinstance(item, os.PathLike) or (isinstance(item, str) and "\n" not in item and os.path.isfile(item)):
            path = os.fspath(item)
            if path.lower().endswith(TABLE_SUFFIXES):
                reader = {".csv": _read_csv_texts, ".jsonl": _read_jsonl, ".parquet": _read_parquet}
                rows = reader[os.path.splitext(path)[1].lower()](path, (text_col,))
                out.extend("" if r.get(text_col) is None else str(r[text_col]) for r in rows)
            else:
                out.append(read_text_file(path) or "")
        elif isinstance(item, str) and os.path.isdir(item):
            out.extend(read_text_file(os.path.join(item, f)) or "" for f in sorted(os.listdir(item))
                       if f.endswith(".txt"))
        else:
            out.append(str(item))
    return out


class TextRowsDataset(Dataset):
    """Yields (row index, text or None when unusable, target). Collate with a tokenizing collate."""

    def __init__(self, texts: Sequence[str], targets: np.ndarray | None) -> None:
        self.texts, self.targets = list(texts), targets

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        text = self.texts[i]
        usable = isinstance(text, str) and text.strip() and not _has_undecodable(text)
        return i, (text if usable else None), (self.targets[i] if self.targets is not None else 0)


def tokenizing_collate(tokenizer, max_length: int):
    """Pad each batch to its longest text (dynamic padding): short texts cost little."""

    def collate(batch):
        kept = [b for b in batch if b[1] is not None]
        if not kept:
            return torch.empty(0, dtype=torch.long), None, None
        enc = tokenizer([b[1] for b in kept], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        idx = torch.tensor([b[0] for b in kept], dtype=torch.long)
        y = torch.as_tensor(np.stack([np.asarray(b[2]) for b in kept]))
        return idx, dict(enc), y

    return collate
