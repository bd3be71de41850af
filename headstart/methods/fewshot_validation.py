"""How a few-shot fit (methods/fewshot.fit_fewshot) is validated: `setfit` with no validation set on its held-out
fifth (metrics out of sample, the races under `auto`, then the head solved again on every row); otherwise on the
validation set given or, where there is none, on the labeled rows themselves scored out of fold."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..budget import Labeled
from ..data.labeled import LabeledData
from ..metrics import task_metrics
from ..plan_runner import refit_final_probe
from ..probe import refit_probe
from ..race import race_baseline
from ..race_untuned import race_frozen_probe
from ..train import LoopConfig


def checked_on(est, full: LabeledData, split, valid: LabeledData | None) -> Labeled:
    """The rows `quality="best"` checks its candidates on: the held-out fifth, else the validation set given."""
    if split is not None:
        return Labeled([full.items[i] for i in split[1]], full.targets[split[1]])
    return Labeled(list(valid.items), valid.targets)


def validate_on_every_label(est, full: LabeledData, valid: LabeledData | None, ok: np.ndarray, scored, how: dict,
                             started: float):
    """Validation metrics on `valid`, or else on the labeled rows themselves, scored out of fold (`scored`: their
    leave-one-out or cross-validated probabilities and which rows have one). Returns the rows and scores the
    report reads, as `_raw_scores` gives them."""
    est.data_summary_ = {"train": len(full), "validation": 0 if valid is None else "given",
                         "class_counts": full.class_counts(),
                         "skipped": [{"path": p, "reason": r} for p, r in full.skipped]}
    if valid is not None:
        val = valid
        val_scores = est._raw_scores(val.items)
        validation = est._score(val, val_scores)
    else:
        (proba, keep), val = scored, full.subset(np.flatnonzero(ok))
        val_scores = (np.full((len(val), len(est.classes_)), np.nan), keep)
        val_scores[0][keep] = proba
        validation = ({**task_metrics("classification", val.targets[keep], proba, est.classes_), **how,
                       **({"optimistic": "the encoder was tuned on these labels"} if est.backbone_trained_ else {})}
                      if keep.any() else {"n": 0, "note": "one example per class: nothing to validate on"})
    est.metrics_ = {"validation": validation, "fit_seconds": round(time.perf_counter() - started, 2)}
    return val, val_scores


def held_out_setfit(est, full: LabeledData, split: tuple[list[int], list[int]], embedded, fit_rows: np.ndarray,
                     chosen: dict, since: tuple[float, float]):
    """`setfit` validated on its held-out fifth: metrics out of sample, the race against the no-transfer model
    (auto), then the shipped head solved again on every labeled row. Returns the held-out rows and the shipped
    model's scores on them (the report's)."""
    (x, y, rows), (started, tuning) = embedded, since
    train, val = full.subset(split[0]), full.subset(split[1])
    with torch.no_grad():
        proba = torch.softmax(est.model_.head(x[~fit_rows].float()), -1).numpy().astype(np.float64)
    scores = np.full((len(val), len(est.classes_)), np.nan)
    scored = np.isin(split[1], rows)
    scores[scored] = proba
    val_scores = (scores, scored)
    if est.advice_ is not None:  # auto: never ship a model worse than one it measured (the untuned, no-transfer)
        val_scores = race_frozen_probe(est, train, val, val_scores, time.perf_counter() - tuning)
        loop = LoopConfig(patience=est.patience, mixed_precision=est.mixed_precision, verbose=est.verbose,
                          deadline=None if est.time_limit is None else started + est.time_limit)
        val_scores = race_baseline(est, train, val, val_scores, time.perf_counter() - tuning, loop)
    est.data_summary_ = {"train": len(train), "validation": len(val), "class_counts": full.class_counts(),
                         "skipped": [{"path": p, "reason": r} for p, r in full.skipped]}
    est.metrics_ = {"validation": {**est._score(val, val_scores), "held_out": True},
                    "fit_seconds": round(time.perf_counter() - started, 2)}
    if est.strategy_["name"] in ("baseline", "features"):  # a race's winner on frozen inputs
        refit_final_probe(est, est.model_.backbone, train, val)
    else:
        est.metrics_["refit"] = refit_probe(est.model_.head, [(x[fit_rows], y[fit_rows]), (x[~fit_rows], y[~fit_rows])],
                                            len(est.classes_), chosen)
    return val, val_scores
