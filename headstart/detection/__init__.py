"""Object detection by transfer: boxes in (data.py), a detector on any registry backbone (model.py), the estimator
facade (estimator.py) and mAP (metrics.py)."""

from .estimator import ObjectDetector

__all__ = ["ObjectDetector"]
