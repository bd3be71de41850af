"""Boxes on images: read from a CSV (one box per row), Pascal VOC XML folders or COCO JSON, checked, and cut into
tiles.

Every reader gives the same thing: a list of `Labelled` images (path, size, boxes in pixels, label names), images
without boxes included as negatives. Errors are one line naming the file (and row) at fault. Large images are cut
into tiles at training and evaluation time (`tile`); a box cut by a tile edge is clipped to the tile and kept when
at least half of its area remains inside (`MIN_VISIBLE`), else dropped: a sliver of a tree is not a tree to learn.
"""

from __future__ import annotations

import csv
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

MIN_VISIBLE = 0.5  # a box cut by a tile edge is kept when this share of its area lies inside the tile
EDGE_SLACK = 1.0  # pixels a box may pass the image edge (VOC counts from 1, xmax == width) before it is an error
COLUMNS = ("image_path", "xmin", "ymin", "xmax", "ymax", "label")


@dataclass
class Labelled:
    """One image (or one tile of it: `window` = x0, y0, x1, y1 in the image) and its boxes in the window's pixels."""

    path: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # x1, y1, x2, y2
    labels: list[str] = field(default_factory=list)
    window: tuple[int, int, int, int] | None = None


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header; a one-line error naming the file if it is missing or unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: unreadable image ({type(err).__name__})") from None


def _checked(path: str, boxes: list[list[float]], labels: list[str], where: list[str]) -> Labelled:
    """The image at `path` with its boxes, each checked against the image's size; `where` names each box's source."""
    width, height = image_size(path)
    arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    for box, label, at in zip(arr, labels, where):
        if not label.strip():
            raise DataError(f"{at}: empty label")
        x1, y1, x2, y2 = box.tolist()
        if not np.isfinite(box).all() or x2 <= x1 or y2 <= y1:
            raise DataError(f"{at}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has no area (needs xmax > xmin, ymax > ymin)")
        if x1 < -EDGE_SLACK or y1 < -EDGE_SLACK or x2 > width + EDGE_SLACK or y2 > height + EDGE_SLACK:
            raise DataError(f"{at}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the image "
                            f"{os.path.basename(path)} ({width}x{height})")
    arr[:, [0, 2]] = arr[:, [0, 2]].clip(0, width)
    arr[:, [1, 3]] = arr[:, [1, 3]].clip(0, height)
    return Labelled(path, width, height, arr, [lab.strip() for lab in labels])


def read_csv(path: str) -> list[Labelled]:
    """image_path,xmin,ymin,xmax,ymax,label; paths relative to the CSV's folder. A row whose box and label are
    empty (or all zero, DeepForest's convention) lists an image without objects: a negative."""
    folder = os.path.dirname(os.path.abspath(path))
    rows: dict[str, tuple[list, list, list]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}; needs {','.join(COLUMNS)}")
            for n, row in enumerate(reader, start=2):
                at = f"{path}, line {n}"
                if not (row["image_path"] or "").strip():
                    raise DataError(f"{at}: empty image_path")
                image = os.path.join(folder, row["image_path"].strip())
                boxes, labels, where = rows.setdefault(image, ([], [], []))
                coords = [(row[c] or "").strip() for c in COLUMNS[1:5]]
                if all(c in ("", "0", "0.0") for c in coords):
                    continue  # a negative: the image is listed (so it is kept), with no box
                try:
                    boxes.append([float(c) for c in coords])
                except ValueError:
                    raise DataError(f"{at}: box coordinates {coords} are not numbers") from None
                labels.append(row["label"] or "")
                where.append(at)
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({type(err).__name__})") from None
    return [_checked(image, *parts) for image, parts in rows.items()]


def read_voc(folder: str) -> list[Labelled]:
    """Pascal VOC: one XML file per image in `folder` (or its Annotations/), images beside them or in JPEGImages/."""
    notes = os.path.join(folder, "Annotations")
    notes = notes if os.path.isdir(notes) else folder
    files = sorted(f for f in os.listdir(notes) if f.lower().endswith(".xml"))
    if not files:
        raise DataError(f"{folder}: no Pascal VOC .xml files")
    out = []
    for name in files:
        xml = os.path.join(notes, name)
        try:
            root = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as err:
            raise DataError(f"{xml}: unreadable XML ({err})") from None
        filename = (root.findtext("filename") or "").strip()
        if not filename:
            raise DataError(f"{xml}: no <filename>")
        candidates = [os.path.join(notes, filename), os.path.join(folder, "JPEGImages", filename)]
        image = next((c for c in candidates if os.path.exists(c)), candidates[0])
        boxes, labels = [], []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            try:
                boxes.append([float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
            except (AttributeError, TypeError, ValueError):
                raise DataError(f"{xml}: an <object> lacks numeric <bndbox> xmin, ymin, xmax, ymax") from None
            labels.append(obj.findtext("name") or "")
        out.append(_checked(image, boxes, labels, [f"{xml}, object {i + 1}" for i in range(len(boxes))]))
    return out


def read_coco(path: str) -> list[Labelled]:
    """COCO JSON (images, annotations with bbox = x, y, w, h, categories); image files relative to the JSON's
    folder or its images/. Images with no annotation are negatives."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        images = {im["id"]: im["file_name"] for im in doc["images"]}
        names = {c["id"]: str(c["name"]) for c in doc.get("categories", [])}
        notes = doc.get("annotations", [])
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable JSON ({type(err).__name__})") from None
    except (KeyError, TypeError):
        raise DataError(f"{path}: not COCO JSON (needs images with id and file_name)") from None
    per_image: dict = {i: ([], [], []) for i in images}
    for n, a in enumerate(notes):
        at = f"{path}, annotation {a.get('id', n)}"
        if a.get("image_id") not in per_image:
            raise DataError(f"{at}: image_id {a.get('image_id')!r} is not among the images")
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{at}: bbox must be four numbers x, y, width, height") from None
        boxes, labels, where = per_image[a["image_id"]]
        boxes.append([x, y, x + w, y + h])
        labels.append(names.get(a.get("category_id"), ""))
        where.append(at)
    folder = os.path.dirname(os.path.abspath(path))
    out = []
    for image_id, name in images.items():
        candidates = [os.path.join(folder, name), os.path.join(folder, "images", name)]
        image = next((c for c in candidates if os.path.exists(c)), candidates[0])
        out.append(_checked(image, *per_image[image_id]))
    return out


def read_boxes(data: str) -> list[Labelled]:
    """Labelled images from a CSV, a COCO .json, or a folder of Pascal VOC XML files."""
    if os.path.isdir(data):
        return read_voc(data)
    if not os.path.exists(data):
        raise DataError(f"{data}: not found")
    suffix = os.path.splitext(data)[1].lower()
    if suffix == ".csv":
        return read_csv(data)
    if suffix == ".json":
        return read_coco(data)
    raise DataError(f"{data}: boxes come as a .csv (image_path,xmin,ymin,xmax,ymax,label), a COCO .json or a "
                    "folder of Pascal VOC .xml files")


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Tile origins along one side: every `stride`, the last one flush with the edge so every tile is whole."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    return starts + [length - size]


def windows(width: int, height: int, size: int, overlap: float = 0.0) -> list[tuple[int, int, int, int]]:
    """The tiles covering a width x height image: x0, y0, x1, y1, each `size` square (or the image, if smaller)."""
    stride = max(1, int(size * (1 - overlap)))
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in _starts(height, size, stride) for x in _starts(width, size, stride)]


def cut(item: Labelled, window: tuple[int, int, int, int]) -> Labelled:
    """The part of `item` inside `window` (in the item's own pixels), boxes in the tile's pixels: clipped, and kept
    when at least MIN_VISIBLE of each box's area remains."""
    x0, y0, x1, y1 = window
    b = item.boxes
    clipped = np.stack([b[:, 0].clip(x0, x1), b[:, 1].clip(y0, y1), b[:, 2].clip(x0, x1), b[:, 3].clip(y0, y1)], 1)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]).clip(0) * (clipped[:, 3] - clipped[:, 1]).clip(0)
    keep = (inside >= MIN_VISIBLE * area) & (inside > 0)
    boxes = (clipped[keep] - np.array([x0, y0, x0, y0], np.float32)).astype(np.float32)
    ox, oy = item.window[:2] if item.window is not None else (0, 0)  # a tile cut again: windows in the file's pixels
    return Labelled(item.path, x1 - x0, y1 - y0, boxes, [lab for lab, k in zip(item.labels, keep) if k],
                    (ox + x0, oy + y0, ox + x1, oy + y1))


def tile(items: list[Labelled], size: int, overlap: float = 0.0) -> list[Labelled]:
    """Every image cut into tiles of `size` pixels (an image no larger stays whole, as one tile)."""
    return [cut(item, w) for item in items for w in windows(item.width, item.height, size, overlap)]


def load_image(item: Labelled) -> Image.Image:
    """The RGB pixels of an item's window; unreadable files fail with one line naming them."""
    try:
        with Image.open(item.path) as im:
            im = im.convert("RGB")
            return im.crop(item.window) if item.window is not None else im
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{item.path}: unreadable image ({type(err).__name__})") from None
