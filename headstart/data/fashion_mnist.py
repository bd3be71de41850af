"""Fashion-MNIST as Debian packages it (`apt-get install dataset-fashion-mnist`): real product photos, offline.

The demo and the tests write small, stratified subsets out as PNG folders, so they go through the same
folder-per-class path a user's data does.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
from PIL import Image

from ..errors import DataError

FASHION_MNIST_DIR = os.environ.get("HEADSTART_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def available(folder: str = FASHION_MNIST_DIR) -> bool:
    return all(os.path.exists(os.path.join(folder, f)) for pair in _FILES.values() for f in pair)


def _read_idx(path: str, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def load_split(split: str, folder: str = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) of the 'train' (60,000) or 'test' (10,000) split."""
    if not available(folder):
        raise DataError(f"{folder}: Fashion-MNIST not found; install it with `apt-get install dataset-fashion-mnist` "
                        "(or set HEADSTART_FASHION_MNIST to a folder with its four .gz files)")
    images, labels = _FILES[split]
    x = _read_idx(os.path.join(folder, images), 16).reshape(-1, 28, 28)
    y = _read_idx(os.path.join(folder, labels), 8).astype(np.int64)
    return x, y


def sample_per_class(labels: np.ndarray, per_class: int, seed: int, classes: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(classes)]
    return np.sort(np.concatenate(picks))


def export_subset(dest: str, split: str, per_class: int, seed: int = 0, classes: int = 10) -> str:
    """Write `per_class` images of each of the first `classes` classes as `dest/<class>/<index>.png`."""
    x, y = load_split(split)
    for i in sample_per_class(y, per_class, seed, classes):
        folder = os.path.join(dest, CLASSES[y[i]])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{split}-{i:05d}.png")
        if not os.path.exists(path):
            Image.fromarray(x[i]).save(path)
    return dest
