"""A multi-label model's per-label decision thresholds: `choose_thresholds` keeps a label's threshold off 0.5 only
where it raises micro-F1 on the rows given, and `set_decision_thresholds` sets a fitted model's from its validation
scores. The solved one-vs-rest head (probe_heads.py) chooses them out of fold when it is refitted on every row.
"""

from __future__ import annotations

import numpy as np

THRESHOLD_GRID = tuple(round(float(t), 2) for t in np.arange(0.05, 0.96, 0.05))


def micro_f1(y: np.ndarray, decided: np.ndarray) -> float:
    """Micro-averaged F1 of boolean decisions [rows, labels] against the truth `y`."""
    tp = float((decided & y).sum())
    wrong = float((decided != y).sum())  # false positives + false negatives
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def choose_thresholds(targets: np.ndarray, proba: np.ndarray) -> dict:
    """Per-label decision thresholds that raise micro-F1 on these (validation) rows over 0.5 everywhere: one pass
    of coordinate ascent over THRESHOLD_GRID, a label keeping 0.5 unless another value does strictly better.
    `thresholds` is None when nothing improved (or there are no rows); the micro-F1s are in-sample for the
    thresholds, so the gain they show is optimistic."""
    y = np.asarray(targets) > 0.5
    if not len(y):
        return {"thresholds": None, "micro_f1_at_0.5": None, "micro_f1_thresholds": None}
    thresholds = np.full(y.shape[1], 0.5)
    at_half = best = micro_f1(y, proba >= thresholds)
    for label in range(y.shape[1]):
        for t in THRESHOLD_GRID:
            trial = thresholds.copy()
            trial[label] = t
            score = micro_f1(y, proba >= trial)
            if score > best + 1e-12:
                best, thresholds = score, trial
    improved = best > at_half + 1e-12
    return {"thresholds": [float(t) for t in thresholds] if improved else None,
            "micro_f1_at_0.5": round(at_half, 4), "micro_f1_thresholds": round(best, 4)}


def set_decision_thresholds(est, val, val_scores: tuple[np.ndarray, np.ndarray]) -> None:
    """Multi-label: the fitted model's per-label thresholds (`thresholds_`, saved in the bundle), chosen on its
    validation scores, and both micro-F1s in `metrics_["thresholds"]`; other tasks decide without them. A solved
    head refitted on every row replaces them with probe_heads.out_of_fold_thresholds (plan_runner.refit_final_probe)."""
    est.thresholds_ = None
    if est._task != "multilabel":
        return
    scores, ok = val_scores
    choice = choose_thresholds(val.targets[ok], scores[ok])
    est.thresholds_ = choice["thresholds"]
    est.metrics_["thresholds"] = choice
