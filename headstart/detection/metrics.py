"""Mean average precision of boxes, from torchmetrics (COCO's definition, computed by pycocotools)."""

from __future__ import annotations

import torch


def box_map(preds: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]], classes: list[str]) -> dict:
    """mAP@0.5 and mAP@[.5:.95], overall and per class (by name), as plain floats.

    `preds`: boxes, scores, labels per image; `targets`: boxes, labels. A class with no true box in `targets` has
    no average precision (None), as COCO leaves it out of the mean."""
    from torchmetrics.detection import MeanAveragePrecision

    coco = MeanAveragePrecision(iou_type="bbox", class_metrics=True)
    # torchmetrics' per-class figures are at [.5:.95] only: a second metric at IoU 0.5 alone gives AP@0.5 per class
    at_50 = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5], class_metrics=True)
    for metric in (coco, at_50):
        metric.update(preds, targets)
    full, half = coco.compute(), at_50.compute()

    def number(t: torch.Tensor) -> float | None:
        v = float(t)
        return None if v < 0 else round(v, 4)  # torchmetrics writes -1 where nothing was there to score

    def per_class(result: dict) -> dict[int, float | None]:
        ids = result["classes"].reshape(-1).tolist()
        values = result["map_per_class"].reshape(-1).tolist()
        return {int(i): number(torch.tensor(v)) for i, v in zip(ids, values)}

    full_pc, half_pc = per_class(full), per_class(half)
    return {
        "map_50": number(half["map"]),
        "map": number(full["map"]),
        "map_75": number(full["map_75"]),
        "per_class": {name: {"map_50": half_pc.get(i), "map": full_pc.get(i)} for i, name in enumerate(classes)},
        "images": len(targets),
        "boxes": int(sum(len(t["boxes"]) for t in targets)),
        "predicted_boxes": int(sum(len(p["boxes"]) for p in preds)),
    }
