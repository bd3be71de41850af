"""Metrics for classification, multi-label and regression, as plain JSON-able dicts."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """ECE: confidence vs accuracy gap, averaged over equal-width confidence bins weighted by their size."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def top_k_accuracy(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    top = np.argsort(-proba, axis=1)[:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    y_pred = proba.argmax(axis=1)
    labels = list(range(len(classes)))
    p, r, f, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    k = min(5, max(2, len(classes) - 1))
    return {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(f.mean()),
        f"top{k}_accuracy": top_k_accuracy(y_true, proba, k),
        "ece": expected_calibration_error(y_true, proba),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def multilabel_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                       thresholds: list[float] | None = None) -> dict:
    """Decisions at each label's threshold (the model's `thresholds_`, thresholds.choose_thresholds), else 0.5."""
    y_pred = (proba >= (0.5 if thresholds is None else np.asarray(thresholds))).astype(int)
    return {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),  # exact-match ratio
        "micro_f1": float(skm.f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    return {
        "n": int(len(y_true)),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "r2": float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan"),
    }


def task_metrics(task: str, y_true: np.ndarray, scores: np.ndarray, classes: list[str],
                 thresholds: list[float] | None = None) -> dict:
    if task == "classification":
        return classification_metrics(y_true, scores, classes)
    if task == "multilabel":
        return multilabel_metrics(y_true, scores, classes, thresholds)
    return regression_metrics(y_true, scores.reshape(-1))
