"""The detector's tiles as a training set: `TileDataset` (tiles read as tensors, flipped at random for training),
`split_tiles` (a held-out share that shares no pixel with what trains) and `collate` (the loop's batches).

Apart from estimator.py, which cuts the tiles, chooses the split and runs the loop over these batches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from .data import Labelled, load_image


class TileDataset(Dataset):
    """(index, image tensor in [0, 1], target) per tile; training tiles are flipped at random (left-right)."""

    def __init__(self, items: list[Labelled], classes: list[str], flip: bool) -> None:
        self.items, self.index, self.flip = items, {c: i for i, c in enumerate(classes)}, flip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        image = pil_to_tensor(load_image(item)).float() / 255.0
        boxes = torch.as_tensor(item.boxes, dtype=torch.float32).reshape(-1, 4)
        labels = torch.as_tensor([self.index[lab] for lab in item.labels], dtype=torch.long)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes = torch.stack([image.shape[-1] - boxes[:, 2], boxes[:, 1], image.shape[-1] - boxes[:, 0],
                                 boxes[:, 3]], 1)
        return i, image, {"boxes": boxes, "labels": labels}


def split_tiles(rows: list[Labelled], val_fraction: float, seed: int) -> tuple[list[Labelled], list[Labelled]]:
    """`val_fraction` of the rows (at least one, never all) held out at random; training rows that overlap a
    held-out one in the same file are dropped, so no pixel is both trained on and validated."""
    order = np.random.default_rng(seed).permutation(len(rows))
    n_val = int(round(val_fraction * len(rows))) if len(rows) > 1 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(rows) > 1 else 0), len(rows) - 1)
    val = [rows[i] for i in order[:n_val]]
    return [rows[i] for i in order[n_val:] if not any(tiles_overlap(rows[i], v) for v in val)], val


def tiles_overlap(a: Labelled, b: Labelled) -> bool:
    if a.path != b.path or a.window is None or b.window is None:
        return a.path == b.path
    return a.window[0] < b.window[2] and b.window[0] < a.window[2] and a.window[1] < b.window[3] and \
        b.window[1] < a.window[3]


def collate(rows: list) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The loop's (index, inputs, targets) batch: the model takes images and boxes together and returns its loss,
    so the loop's own target is a placeholder that only counts the images."""
    idx = torch.as_tensor([r[0] for r in rows])
    return idx, {"images": [r[1] for r in rows], "targets": [r[2] for r in rows]}, torch.zeros(len(rows))
