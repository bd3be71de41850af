"""Synthetic boxes for the detection tests: bright squares (class `square`) and dark bars (class `bar`) on noise."""

from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image


def make_box_images(root: str, n: int, size: int = 64, seed: int = 0, negatives: int = 0) -> str:
    """`n` images with one or two objects each (and `negatives` without any); returns the CSV of their boxes."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    rows = []
    for i in range(n + negatives):
        pixels = rng.normal(110, 20, size=(size, size, 3))
        name = f"img{i}.png"
        if i >= n:
            rows.append([name, "", "", "", "", ""])
        for k in range(0 if i >= n else 1 + i % 2):
            side = int(rng.integers(size // 4, size // 2))
            x, y = (int(v) for v in rng.integers(0, size - side, 2))
            label = "square" if k == 0 else "bar"
            h = side if label == "square" else max(4, side // 3)
            pixels[y:y + h, x:x + side] = 240 if label == "square" else 10
            rows.append([name, x, y, x + side, y + h, label])
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(root, name))
    path = os.path.join(root, "boxes.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "xmin", "ymin", "xmax", "ymax", "label"])
        w.writerows(rows)
    return path
