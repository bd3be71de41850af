"""What the report says about the data: class counts and imbalance, duplicates, and what was skipped.

Duplicates matter twice in transfer learning's small data: a copy in both the training and the validation split
inflates the validation score (and so early stopping and `auto`'s choice), and a copy with two labels is noise no
model can fit. Images are compared by the hash of their file bytes, texts after lower-casing and collapsing spaces.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict

from .labeled import LabeledData

MAX_LISTED = 20  # duplicate groups and skipped files listed by name; all are counted


def _fingerprint(item: object, modality: str) -> str | None:
    if modality == "text":
        return "t:" + re.sub(r"\s+", " ", str(item).strip().lower())
    try:
        with open(os.fspath(item), "rb") as f:
            return "f:" + hashlib.blake2b(f.read(), digest_size=16).hexdigest()
    except OSError:  # unreadable files are reported as skipped, not here
        return None


def _label(data: LabeledData, i: int) -> str:
    target = data.targets[i]
    if data.classes and getattr(target, "ndim", 0) == 0 and float(target).is_integer():
        return data.classes[int(target)]
    return str(target.tolist() if hasattr(target, "tolist") else target)


def find_duplicates(train: LabeledData, val: LabeledData, modality: str) -> dict:
    """Groups of identical inputs: how many sit within training, straddle training and validation, or disagree
    on the label; with up to MAX_LISTED groups named."""
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for part_name, part in (("train", train), ("validation", val)):
        for i, item in enumerate(part.items):
            key = _fingerprint(item, modality)
            if key is not None:
                groups[key].append((part_name, i))
    dup = [members for members in groups.values() if len(members) > 1]
    parts = {"train": train, "validation": val}

    def show(part_name: str, i: int) -> str:
        item = str(parts[part_name].items[i])
        return item if modality != "text" else (item[:80] + ("..." if len(item) > 80 else ""))

    listed, across, conflicting = [], 0, 0
    for members in dup:
        names = {p for p, _ in members}
        labels = {_label(parts[p], i) for p, i in members}
        across += len(names) > 1
        conflicting += len(labels) > 1
        if len(listed) < MAX_LISTED:
            listed.append({"inputs": [f"{p}: {show(p, i)}" for p, i in members], "labels": sorted(labels)})
    return {"groups": len(dup), "extra_copies": sum(len(m) - 1 for m in dup), "across_train_validation": across,
            "conflicting_labels": conflicting, "listed": listed}


def summarize(full: LabeledData, train: LabeledData, val: LabeledData, modality: str) -> dict:
    """The data section of the bundle's config and of the report."""
    counts = full.class_counts() if full.classes else {}
    nonzero = [c for c in counts.values() if c]
    return {
        "train": len(train), "validation": len(val), "class_counts": counts,
        "imbalance": round(max(nonzero) / min(nonzero), 2) if nonzero else None,
        "duplicates": find_duplicates(train, val, modality),
        "skipped": [{"path": p, "reason": r} for p, r in full.skipped],
    }
