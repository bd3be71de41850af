"""Labeled images from a folder per class or a CSV of `path,label`: checked, counted, split, loaded."""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from ..backbones.base import ImagePreprocess
from ..errors import DataError

TASKS = ("classification", "multilabel", "regression")
MULTILABEL_SEPARATOR = ";"


@dataclass
class LabeledImages:
    """Image paths with their targets. `targets` holds class indices, multi-hot rows or floats by task."""

    paths: list[str]
    targets: np.ndarray
    classes: list[str]
    task: str = "classification"
    source: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int]) -> LabeledImages:
        idx = list(idx)
        return LabeledImages([self.paths[i] for i in idx], self.targets[idx], self.classes, self.task, self.source)

    def class_counts(self) -> dict[str, int]:
        if self.task == "classification":
            counts = Counter(int(t) for t in self.targets)
            return {c: counts.get(i, 0) for i, c in enumerate(self.classes)}
        if self.task == "multilabel":
            return {c: int(n) for c, n in zip(self.classes, self.targets.sum(axis=0))}
        return {}


def image_problem(path: str) -> str | None:
    """Why `path` is not a readable image, or None. Checks the header and structure, not every pixel."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.verify()
    except FileNotFoundError:
        return "file not found"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "image too large (decompression bomb guard)"
    except Exception as err:  # PIL raises many types for many formats; each means "not an image we can read"
        return f"not a readable image ({type(err).__name__})"
    return None


def _check_all(paths: list[str]) -> list[str | None]:
    # PIL releases the GIL while parsing, so a few threads hide file-system latency.
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(image_problem, paths))


def _keep_readable(paths: list[str], strict: bool) -> tuple[list[bool], list[tuple[str, str]]]:
    problems = _check_all(paths)
    skipped = [(p, why) for p, why in zip(paths, problems) if why]
    if skipped and strict:
        path, why = skipped[0]
        raise DataError(f"{path}: {why}; remove or replace it (or drop --strict to skip unreadable files)")
    return [why is None for why in problems], skipped


def _visible_files(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return found


def _require_classes(classes: list[str], counts: dict[str, int], where: str) -> None:
    empty = [c for c in classes if counts.get(c, 0) == 0]
    if empty:
        raise DataError(f"{where}: class '{empty[0]}' has no readable images; add images or remove that class")
    if len(classes) < 2:
        only = f" ('{classes[0]}')" if classes else ""
        raise DataError(f"{where}: only one class{only}; classification needs at least two classes")


def scan_image_folder(root: str, strict: bool = False) -> LabeledImages:
    """A folder with one sub-folder per class (nested folders inside a class are included)."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders; put each class's images in {root}/<class name>/")
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = _visible_files(os.path.join(root, c))
        if not files:
            raise DataError(f"{os.path.join(root, c)}: class '{c}' is empty; add images or remove the folder")
        paths += files
        labels += [i] * len(files)
    ok, skipped = _keep_readable(paths, strict)
    paths = [p for p, k in zip(paths, ok) if k]
    targets = np.array([t for t, k in zip(labels, ok) if k], dtype=np.int64)
    data = LabeledImages(paths, targets, classes, "classification", root, skipped)
    _require_classes(classes, data.class_counts(), root)
    return data


def _read_csv_rows(path: str, columns: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV ({err}); check quoting on that line") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}: missing column '{missing[0]}' (found: {', '.join(header) or 'no header'})")
    if not rows:
        raise DataError(f"{path}: no rows; add one row per image")
    return rows


def _label_error(path: str, line: int, label_col: str, why: str) -> DataError:
    return DataError(f"{path}, line {line}: {why} in column '{label_col}'; fix or remove that row")


def read_image_csv(
    path: str, task: str = "classification", path_col: str = "path", label_col: str = "label", strict: bool = False
) -> LabeledImages:
    """A CSV with an image path column (relative to the CSV's folder) and a label column."""
    rows = _read_csv_rows(path, (path_col, label_col))
    base = os.path.dirname(os.path.abspath(path))
    paths, raw = [], []
    for line, row in enumerate(rows, start=2):
        label = (row.get(label_col) or "").strip()
        if label == "" or label.lower() in ("nan", "none", "null"):
            raise _label_error(path, line, label_col, "missing label")
        if task == "regression":
            try:
                value = float(label)
            except ValueError:
                raise _label_error(path, line, label_col, f"'{label}' is not a number") from None
            if not math.isfinite(value):
                raise _label_error(path, line, label_col, f"'{label}' is not finite")
            raw.append(value)
        else:
            raw.append(label)
        paths.append(os.path.join(base, row[path_col].strip()))
    ok, skipped = _keep_readable(paths, strict)
    paths = [p for p, k in zip(paths, ok) if k]
    raw = [r for r, k in zip(raw, ok) if k]
    if not paths:
        raise DataError(f"{path}: none of the listed images could be read (first: {skipped[0][0]}: {skipped[0][1]})")
    if task == "regression":
        return LabeledImages(paths, np.array(raw, dtype=np.float32), [], task, path, skipped)
    if task == "multilabel":
        sets = [[s.strip() for s in r.split(MULTILABEL_SEPARATOR) if s.strip()] for r in raw]
        classes = sorted({c for s in sets for c in s})
        index = {c: i for i, c in enumerate(classes)}
        targets = np.zeros((len(sets), len(classes)), dtype=np.float32)
        for row, s in enumerate(sets):
            targets[row, [index[c] for c in s]] = 1.0
        if len(classes) < 2:
            raise DataError(f"{path}: multi-label data needs at least two distinct labels")
        return LabeledImages(paths, targets, classes, task, path, skipped)
    classes = sorted(set(raw))
    index = {c: i for i, c in enumerate(classes)}
    data = LabeledImages(paths, np.array([index[r] for r in raw], dtype=np.int64), classes, task, path, skipped)
    _require_classes(classes, data.class_counts(), path)
    return data


def load_images(data: str | os.PathLike | LabeledImages, task: str = "classification", strict: bool = False,
                path_col: str = "path", label_col: str = "label") -> LabeledImages:
    """Dispatch on what the user gave: a folder per class, a CSV file, or already loaded data."""
    if isinstance(data, LabeledImages):
        return data
    if task not in TASKS:
        raise DataError(f"unknown task '{task}': choose one of {', '.join(TASKS)}")
    data = os.fspath(data)
    if not os.path.exists(data):
        raise DataError(f"{data}: no such file or folder")
    if os.path.isdir(data):
        if task != "classification":
            raise DataError(f"{data}: a folder per class holds classification data; give a CSV for {task}")
        return scan_image_folder(data, strict)
    if data.lower().endswith(".csv"):
        return read_image_csv(data, task, path_col, label_col, strict)
    raise DataError(f"{data}: expected a folder with one sub-folder per class, or a .csv with path,label columns")


def list_image_files(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files named directly, plus every visible file under named folders, in a stable order."""
    out: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            out.extend(_visible_files(item))
        elif os.path.exists(item):
            out.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return out


def stratified_split(data: LabeledImages, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out `val_fraction` of the rows, keeping class proportions for classification."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data))
    stratify = None
    if data.task == "classification":
        counts = data.class_counts()
        small = [c for c, n in counts.items() if n < 2]
        if small:
            raise DataError(
                f"{data.source}: class '{small[0]}' has {counts[small[0]]} image; at least 2 per class are needed to "
                "hold one out for validation (or pass a validation set)"
            )
        stratify = data.targets
    n_val = max(int(round(len(data) * val_fraction)), len(data.classes) if stratify is not None else 1)
    if n_val >= len(data):
        raise DataError(f"{data.source}: too few images ({len(data)}) to hold out a validation set")
    train, val = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    return sorted(train.tolist()), sorted(val.tolist())


_INTERP = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
           "nearest": T.InterpolationMode.NEAREST}


def _normalise(pre: ImagePreprocess) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(pre.mean, pre.std)]


def eval_transform(pre: ImagePreprocess) -> T.Compose:
    interp = _INTERP[pre.interpolation]
    return T.Compose([T.Resize(pre.resize, interpolation=interp, antialias=True), T.CenterCrop(pre.size),
                      *_normalise(pre)])


def train_transform(pre: ImagePreprocess) -> T.Compose:
    """Light augmentation: small data overfits without it, and heavy augmentation fights pretrained features."""
    interp = _INTERP[pre.interpolation]
    return T.Compose([T.RandomResizedCrop(pre.size, scale=(0.6, 1.0), interpolation=interp, antialias=True),
                      T.RandomHorizontalFlip(), *_normalise(pre)])


class ImageRowsDataset(Dataset):
    """Yields (row index, image tensor or None when undecodable, target). Collate with `collate_skipping`."""

    def __init__(self, paths: Sequence[str], targets: np.ndarray | None, transform: T.Compose) -> None:
        self.paths, self.targets, self.transform = list(paths), targets, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(self.paths[i]) as img:
                    x = self.transform(img.convert("RGB"))
        except Exception:  # a file that passed the header check but fails to decode: skipped, and counted
            x = None
        y = self.targets[i] if self.targets is not None else 0
        return i, x, y


def collate_skipping(batch):
    """Stack a batch, dropping rows whose image failed to decode; their indices are simply absent."""
    kept = [b for b in batch if b[1] is not None]
    if not kept:
        return torch.empty(0, dtype=torch.long), None, None
    idx = torch.tensor([b[0] for b in kept], dtype=torch.long)
    x = torch.stack([b[1] for b in kept])
    y = torch.as_tensor(np.stack([np.asarray(b[2]) for b in kept]))
    return idx, x, y
