"""`EstimatorInternals`: the estimator's non-public protocol, which the rest of the package calls on it (the
race, the advisor, the methods, the deploy side): reading data through its modality, targets as tensors, scores from
the fitted model (torch, a scikit-learn head, or an attached runtime), decoding a row, metrics on labeled data, and
the config a bundle is saved with.

`TransferEstimator` (estimator.py) inherits it, so every call reads `est._raw_scores(...)` as before; estimator.py
keeps the public face (parameters, fit, predict, evaluate, save, extend).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .data.labeled import LabeledData, align_classes
from .errors import HeadstartError
from .heads import HeadConfig, TransferModel, outputs_to_scores
from .inference import _device, embed, run_over
from .methods.classical import predict_proba_full
from .metrics import task_metrics
from .modalities import MODALITIES, Modality


class EstimatorInternals:
    """Mixed into `TransferEstimator`: it reads `modality`, `_task`, the parameters and the fitted state."""

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise HeadstartError(f"this {type(self).__name__} is not fitted yet: call fit() or hs.load() first")

    # --- data -------------------------------------------------------------------------------------------
    @property
    def _modality(self) -> Modality:
        return MODALITIES[self.modality]

    def _load(self, data) -> LabeledData:
        return self._modality.load(data, self._task, self.strict, self._columns())

    def _columns(self) -> dict[str, str]:
        key = "text" if self.modality == "text" else "path"
        return {key: self.input_col or key, "label": self.label_col}

    def _inputs(self, inputs) -> list:
        return self._modality.list_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))

    def _align(self, data: LabeledData, classes: list[str]) -> LabeledData:
        return align_classes(data, classes)

    def _target_tensor(self, targets: np.ndarray) -> torch.Tensor:
        if self._task == "classification":
            return torch.as_tensor(targets, dtype=torch.long)
        if self._task == "regression":
            mean, std = self.target_scaling_["mean"], self.target_scaling_["std"]
            return torch.as_tensor((targets - mean) / std, dtype=torch.float32).reshape(-1, 1)
        return torch.as_tensor(targets, dtype=torch.float32)

    # --- scores ---------------------------------------------------------------------------------------
    def _raw_scores(self, items: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Model outputs per path (probabilities, or standardised values) and a mask of readable images."""
        self._check_fitted()
        if getattr(self, "runtime_", None) is not None:  # loaded with runtime="onnx" (deploy/loading.py)
            return self.runtime_.score_items(self, items, self.verbose)
        if getattr(self, "classical_", None) is not None:
            feats, ok = embed(self.model_.backbone, items, batch_size=self.batch_size, num_workers=self.num_workers,
                              use_cache=self.use_cache, cache_dir=self.cache_dir, verbose=self.verbose)
            scores = predict_proba_full(self.classical_, feats, len(self.classes_)).astype(np.float64)
            scores[~ok] = np.nan
            return scores, ok
        if not self.backbone_trained_:
            return self._head_scores(self.model_, items)
        out, ok = run_over(self.model_, items, self.batch_size, self.num_workers, self.verbose, description="predict")
        scores = outputs_to_scores(self._task, torch.as_tensor(out).float()).numpy().astype(np.float64)
        scores[~ok] = np.nan
        return scores, ok

    def _head_scores(self, model: TransferModel, items: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """`_raw_scores` of a model whose backbone is still as built: its head on the (cached) features."""
        feats, ok = embed(model.backbone, items, batch_size=self.batch_size, num_workers=self.num_workers,
                          use_cache=self.use_cache, cache_dir=self.cache_dir, verbose=self.verbose)
        # always on the inference device (a GPU, if any), so a fitted and a reloaded model agree exactly
        device = _device()
        head = model.head.to(device).eval()
        with torch.inference_mode():
            logits = head(torch.as_tensor(feats, device=device)).cpu()
        scores = outputs_to_scores(self._task, logits.float()).numpy().astype(np.float64)
        scores[~ok] = np.nan
        return scores, ok

    def _decode(self, row: np.ndarray):
        if self._task == "classification":
            return self.classes_[int(row.argmax())]
        if self._task == "multilabel":
            thresholds = getattr(self, "thresholds_", None) or [0.5] * len(self.classes_)
            return [c for c, p, t in zip(self.classes_, row, thresholds) if p >= t]
        return float(row[0] * self.target_scaling_["std"] + self.target_scaling_["mean"])

    def _score(self, data: LabeledData, raw: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
        scores, ok = raw if raw is not None else self._raw_scores(data.items)
        targets = data.targets[ok]
        scores = scores[ok]
        if self._task == "regression":
            scores = scores * self.target_scaling_["std"] + self.target_scaling_["mean"]
        result = task_metrics(self._task, targets, scores, self.classes_, getattr(self, "thresholds_", None))
        result["unreadable"] = int((~ok).sum())
        return result

    # --- the bundle ------------------------------------------------------------------------------------
    def _config(self) -> dict:
        """The bundle's config.json: what `save` writes beside the weights and `restore.load_bundle` rebuilds from."""
        return {
            "modality": self.modality, "task": self._task, "estimator": type(self).__name__,
            "backbone": self.spec_.to_dict(), "backbone_trained": self.backbone_trained_,
            "head": (self._classical_saved[0] if getattr(self, "classical_", None) is not None
                     else {**HeadConfig(kind=getattr(self.model_.head, "kind", self.head)).to_dict(),
                           "out_dim": max(1, len(self.classes_))}),
            "labels": self.classes_, "target_scaling": getattr(self, "target_scaling_", None),
            "strategy": self.strategy_, "metrics": self.metrics_, "data": self.data_summary_,
            "advisor": self.advice_.to_dict() if getattr(self, "advice_", None) else None,
            "params": {k: v for k, v in self.get_params().items() if k not in ("out_dir", "cache_dir")},
            "continual": getattr(self, "continual_", None), "thresholds": getattr(self, "thresholds_", None),
        }
