"""What every modality shares: labeled rows, target building by task, label checks, table reading, splits."""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

TASKS = ("classification", "multilabel", "regression")
MULTILABEL_SEPARATOR = ";"
_MISSING = ("", "nan", "none", "null", "na")
# Characters in one CSV field. The csv module's default (131,072) refuses a long review or article, which is data,
# not damage: tokenizers truncate it. The bound stays for what is damage: an unclosed quote swallowing the rest of
# a large table into one field (`headstart predict` streams tables, so it would otherwise hold all of it).
MAX_CSV_FIELD = 64 << 20


@dataclass
class LabeledData:
    """Inputs (image paths or texts) with their targets: class indices, multi-hot rows or floats by task."""

    items: list
    targets: np.ndarray
    classes: list[str]
    task: str = "classification"
    source: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx: Sequence[int]) -> LabeledData:
        idx = list(idx)
        return LabeledData([self.items[i] for i in idx], self.targets[idx], self.classes, self.task, self.source)

    def class_counts(self) -> dict[str, int]:
        if self.task == "classification":
            counts = Counter(int(t) for t in self.targets)
            return {c: counts.get(i, 0) for i, c in enumerate(self.classes)}
        if self.task == "multilabel":
            return {c: int(n) for c, n in zip(self.classes, self.targets.sum(axis=0))}
        return {}


def load_source(data, task: str, read_folder: Callable[[str], LabeledData], suffixes: tuple[str, ...],
                read_table: Callable[[str], LabeledData], expected: str) -> LabeledData:
    """Dispatch on what the user gave: loaded data, a folder per class, or a table file. Errors name the path."""
    if isinstance(data, LabeledData):
        return data
    check_task(task)
    data = os.fspath(data)
    if not os.path.exists(data):
        raise DataError(f"{data}: no such file or folder")
    if os.path.isdir(data):
        if task != "classification":
            raise DataError(f"{data}: a folder per class holds classification data; give a table for {task}")
        return read_folder(data)
    if not os.path.isfile(data):  # a named pipe called data.csv: opening it would wait for a writer forever
        raise DataError(f"{data}: not a regular file (a pipe, socket or device); give a folder or a table file")
    if data.lower().endswith(suffixes):
        return read_table(data)
    raise DataError(f"{data}: expected {expected}")


def check_task(task: str) -> None:
    if task not in TASKS:
        raise DataError(f"unknown task '{task}': choose one of {', '.join(TASKS)}")


def require_classes(classes: list[str], counts: dict[str, int], where: str, what: str = "images") -> None:
    empty = [c for c in classes if counts.get(c, 0) == 0]
    if empty:
        raise DataError(f"{where}: class '{empty[0]}' has no readable {what}; add {what} or remove that class")
    if len(classes) < 2:
        only = f" ('{classes[0]}')" if classes else ""
        raise DataError(f"{where}: only one class{only}; classification needs at least two classes")


def label_error(path: str, line: int, label_col: str, why: str) -> DataError:
    return DataError(f"{path}, line {line}: {why} in column '{label_col}'; fix or remove that row")


def parse_label(value: object, task: str, path: str, line: int, label_col: str) -> str | float:
    """A checked label: a non-empty string, or a finite number for regression. Errors name the row."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise label_error(path, line, label_col, "missing label")
    text = str(value).strip()
    if text.lower() in _MISSING:
        raise label_error(path, line, label_col, "missing label")
    if task != "regression":
        return text
    try:
        number = float(text)
    except ValueError:
        raise label_error(path, line, label_col, f"'{text}' is not a number") from None
    if not math.isfinite(number):
        raise label_error(path, line, label_col, f"'{text}' is not finite")
    return number


def build_labeled(items: list, raw: list, task: str, source: str, skipped: list[tuple[str, str]],
                  what: str = "images") -> LabeledData:
    """Targets from checked raw labels: class indices, multi-hot rows (`a;b`) or floats."""
    if task == "regression":
        return LabeledData(items, np.array(raw, dtype=np.float32), [], task, source, skipped)
    if task == "multilabel":
        sets = [[s.strip() for s in str(r).split(MULTILABEL_SEPARATOR) if s.strip()] for r in raw]
        classes = sorted({c for s in sets for c in s})
        if len(classes) < 2:
            raise DataError(f"{source}: multi-label data needs at least two distinct labels")
        index = {c: i for i, c in enumerate(classes)}
        targets = np.zeros((len(sets), len(classes)), dtype=np.float32)
        for row, s in enumerate(sets):
            targets[row, [index[c] for c in s]] = 1.0
        return LabeledData(items, targets, classes, task, source, skipped)
    classes = sorted({str(r) for r in raw})
    index = {c: i for i, c in enumerate(classes)}
    data = LabeledData(items, np.array([index[str(r)] for r in raw], dtype=np.int64), classes, task, source, skipped)
    require_classes(classes, data.class_counts(), source, what)
    return data


def csv_dict_reader(f) -> csv.DictReader:
    """A DictReader whose fields may hold up to MAX_CSV_FIELD characters (the limit is process-wide in csv)."""
    csv.field_size_limit(MAX_CSV_FIELD)
    return csv.DictReader(f)


def csv_problem(path: str, reader: csv.DictReader, err: csv.Error) -> DataError:
    """A csv.Error as one line naming the file, the line and the likely fix."""
    if "field larger than field limit" in str(err):
        return DataError(f"{path}, line {reader.line_num}: a field over {MAX_CSV_FIELD:,} characters (an unclosed "
                         "quote runs to the end of the file?); check quoting from that line back")
    return DataError(f"{path}, line {reader.line_num}: malformed CSV ({err}); check quoting on that line")


def read_csv_rows(path: str, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV with a header, checking the named columns exist. Errors name the file and fix."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv_dict_reader(f)
            try:
                rows = list(reader)
            except csv.Error as err:
                raise csv_problem(path, reader, err) from None
            header = reader.fieldnames or []
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
    require_columns(path, header, columns)
    if not rows:
        raise DataError(f"{path}: no rows; add one row per example")
    return rows


def require_columns(path: str, header: Sequence[str], columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}: missing column '{missing[0]}' (found: {', '.join(map(str, header)) or 'no header'})")


def align_classes(data: LabeledData, classes: list[str]) -> LabeledData:
    """Re-index an evaluation set's labels onto the training classes, by name."""
    if data.task == "regression" or data.classes == classes:
        return data
    unknown = sorted(set(data.classes) - set(classes))
    if unknown:
        raise DataError(f"{data.source}: label '{unknown[0]}' was not among the training classes {classes}")
    pos = np.array([classes.index(c) for c in data.classes])
    if data.task == "classification":
        targets = pos[data.targets]
    else:
        targets = np.zeros((len(data), len(classes)), dtype=np.float32)
        targets[:, pos] = data.targets
    return LabeledData(data.items, targets, classes, data.task, data.source, data.skipped)


def stratified_split(data: LabeledData, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out `val_fraction` of the rows, keeping class proportions for classification."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data))
    stratify = None
    if data.task == "classification":
        counts = data.class_counts()
        small = [c for c, n in counts.items() if n < 2]
        if small:
            raise DataError(
                f"{data.source}: class '{small[0]}' has {counts[small[0]]} example; at least 2 per class are needed "
                "to hold one out for validation (or pass a validation set)"
            )
        stratify = data.targets
    n_val = max(int(round(len(data) * val_fraction)), len(data.classes) if stratify is not None else 1)
    if n_val >= len(data):
        raise DataError(f"{data.source}: too few examples ({len(data)}) to hold out a validation set")
    train, val = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    return sorted(train.tolist()), sorted(val.tolist())


def stratified_subsample(n: int, labels: np.ndarray, seed: int, limit: int) -> np.ndarray:
    """The sorted indices of at most `limit` of `n` rows, keeping class proportions: measurements (the advisor's)
    and searches (the probe's C) whose cost grows with the rows run on this many."""
    if n <= limit:
        return np.arange(n)
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(n), train_size=limit, random_state=seed, stratify=labels)
    return np.sort(keep)
