"""Labeled images from a folder per class or a CSV of `path,label`: checked, counted, split, loaded."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from ..backbones.base import ImagePreprocess
from ..errors import DataError
from .labeled import LabeledData, build_labeled, load_source, parse_label, read_csv_rows, require_classes


def image_problem(path: str) -> str | None:
    """Why `path` is not a readable image, or None. Checks the header and structure, not every pixel."""
    if os.path.exists(path) and not os.path.isfile(path):  # opening a pipe or a device may never return
        return "not a regular file (a folder, pipe, socket or device)"
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
    """Regular files not hidden: a pipe, socket or device could block whoever opens it to read or hash it."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(p for f in sorted(files) if not f.startswith(".") and os.path.isfile(p := os.path.join(root, f)))
    return found


def scan_image_folder(root: str, strict: bool = False) -> LabeledData:
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
    data = LabeledData(paths, targets, classes, "classification", root, skipped)
    require_classes(classes, data.class_counts(), root)
    return data


def read_image_csv(
    path: str, task: str = "classification", path_col: str = "path", label_col: str = "label", strict: bool = False
) -> LabeledData:
    """A CSV with an image path column (relative to the CSV's folder) and a label column."""
    rows = read_csv_rows(path, (path_col, label_col))
    base = os.path.dirname(os.path.abspath(path))
    raw = [parse_label(row.get(label_col), task, path, line, label_col) for line, row in enumerate(rows, start=2)]
    paths = [os.path.join(base, (row.get(path_col) or "").strip()) for row in rows]
    ok, skipped = _keep_readable(paths, strict)
    paths = [p for p, k in zip(paths, ok) if k]
    raw = [r for r, k in zip(raw, ok) if k]
    if not paths:
        raise DataError(f"{path}: none of the listed images could be read (first: {skipped[0][0]}: {skipped[0][1]})")
    return build_labeled(paths, raw, task, path, skipped)


def load_images(data: str | os.PathLike | LabeledData, task: str = "classification", strict: bool = False,
                path_col: str = "path", label_col: str = "label") -> LabeledData:
    """A folder per class, a CSV of path,label, or already loaded data."""
    return load_source(data, task, lambda d: scan_image_folder(d, strict), (".csv",),
                       lambda f: read_image_csv(f, task, path_col, label_col, strict),
                       "a folder with one sub-folder per class, or a .csv with path,label columns")


def list_image_files(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files named directly, plus every visible file under named folders, in a stable order."""
    out: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            out.extend(_visible_files(item))
        elif os.path.isfile(item):
            out.append(item)
        elif os.path.exists(item):
            raise DataError(f"{item}: not a regular file (a pipe, socket or device); name image files or folders")
        else:
            raise DataError(f"{item}: no such file or folder")
    return out


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
            if not os.path.isfile(self.paths[i]):  # checked when listed; it may have been replaced since
                raise OSError("not a regular file")
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
