"""Mean average precision of boxes, from torchmetrics (COCO's definition, computed by pycocotools)."""

from __future__ import annotations

import torch


def box_map(preds: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]], classes: list[str]) -> dict:
    """mAP@0.5, mAP@0.75 and mAP@[.5:.95], overall and per class (by name), as plain floats.

    `preds`: boxes, scores, labels per image; `targets`: boxes, labels. A class with no true box in `targets` has
    no average precision (None), as COCO leaves it out of the mean."""
    from torchmetrics.detection import MeanAveragePrecision

    # COCO ranks at most 100 detections per image; a whole aerial image holds hundreds of trees, so the cap is
    # raised to twice the most boxes any image has (never below COCO's 100), else recall there could not pass 100.
    cap = max(100, 2 * max((len(t["boxes"]) for t in targets), default=0))
    metric = MeanAveragePrecision(iou_type="bbox", max_detection_thresholds=[1, 10, cap], extended_summary=True)
    metric.update(preds, targets)
    result = metric.compute()
    # COCO's precision table (IoU threshold x recall x class x area x detection cap), read at every area and the
    # largest cap: the summary torchmetrics prints is fixed at a cap of 100, so the means are taken here, as
    # pycocotools takes them (entries of -1 mark what had nothing to score).
    precision = result["precision"][:, :, :, 0, -1]
    ids = result["classes"].reshape(-1).tolist()

    def mean(table: torch.Tensor) -> float | None:
        valid = table[table > -1]
        return round(float(valid.mean()), 4) if valid.numel() else None

    per_class = {}
    for i, name in enumerate(classes):
        k = ids.index(i) if i in ids else None
        per_class[name] = {"map_50": mean(precision[0, :, k]) if k is not None else None,
                           "map": mean(precision[:, :, k]) if k is not None else None}
    # a class only predicted, never true, has no AP (COCO: -1), so it does not lower the mean
    return {
        "map_50": mean(precision[0]),
        "map_75": mean(precision[5]),
        "map": mean(precision),
        "per_class": per_class,
        "images": len(targets),
        "boxes": int(sum(len(t["boxes"]) for t in targets)),
        "predicted_boxes": int(sum(len(p["boxes"]) for p in preds)),
    }
