"""A picture of what the detector finds: a few validation tiles side by side, true boxes in green, predicted boxes
(score at least `min_score`) in red, written to the run's report folder."""

from __future__ import annotations

import os
import tempfile

import torch
from PIL import Image, ImageDraw

from .data import Labelled, load_image

TRUE, PREDICTED = (0, 255, 0), (255, 0, 0)


def draw_boxes(tiles: list[Labelled], preds: list[dict[str, torch.Tensor]], path: str, min_score: float = 0.3,
               limit: int = 4, height: int = 256) -> str:
    """Up to `limit` tiles, each scaled to `height` pixels, in one PNG at `path` (written whole, then renamed)."""
    panels = []
    for item, found in list(zip(tiles, preds))[:limit]:
        image = load_image(item).copy()
        draw = ImageDraw.Draw(image)
        for box, score in zip(found["boxes"].tolist(), found["scores"].tolist()):
            if score >= min_score:
                draw.rectangle(box, outline=PREDICTED, width=1)
        for box in item.boxes.tolist():  # drawn last: the truth stays visible under a matching prediction
            draw.rectangle(box, outline=TRUE, width=1)
        scale = height / image.height
        panels.append(image.resize((max(1, round(image.width * scale)), height), Image.NEAREST))
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 4 * max(0, len(panels) - 1), height), (255, 255, 255))
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + 4
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        sheet.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
