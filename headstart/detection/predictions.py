"""Detections written out: CSV in the training format (one box per row, plus its score; an image with no box gets
one row with an empty box, as negatives are given), or JSONL (one object per image)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import TextIO

from ..data.images import list_image_files
from .data import COLUMNS
from .estimator import ObjectDetector


def csv_rows(found: dict) -> list[list]:
    """image_path,xmin,ymin,xmax,ymax,label,score rows of one image's detections (coordinates to 0.1 pixel)."""
    rows = [[found["path"], *(round(v, 1) for v in box), label, round(score, 4)]
            for box, label, score in zip(found["boxes"], found["labels"], found["scores"])]
    return rows or [[found["path"], "", "", "", "", "", ""]]


def image_paths(inputs: Sequence[str]) -> list[str]:
    """Files named directly, and the image files under named folders (a folder of data often holds its CSV too)."""
    from PIL import Image

    suffixes = set(Image.registered_extensions())
    out = []
    for item in inputs:
        found = list_image_files([item])
        out += found if os.path.isfile(item) else [p for p in found if os.path.splitext(p)[1].lower() in suffixes]
    return out


def write_boxes(model: ObjectDetector, inputs: Sequence[str], stream: TextIO, fmt: str = "csv",
                min_score: float = 0.0) -> dict:
    """Detect on every image under `inputs` (files or folders), writing as it goes; returns counts."""
    paths = image_paths(inputs)
    writer = csv.writer(stream) if fmt == "csv" else None
    if writer is not None:
        writer.writerow([*COLUMNS, "score"])
    boxes = 0
    for path in paths:
        found = model.predict([path])[0]
        keep = [i for i, s in enumerate(found["scores"]) if s >= min_score]
        found = {"path": path, **{k: [found[k][i] for i in keep] for k in ("boxes", "labels", "scores")}}
        boxes += len(keep)
        if writer is not None:
            writer.writerows(csv_rows(found))
        else:
            stream.write(json.dumps(found) + "\n")
        stream.flush()
    return {"images": len(paths), "boxes": boxes}
