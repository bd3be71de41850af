"""What a fit leaves in its output folder besides the bundle: the last line of `metrics.jsonl` and the report's
content, both built from the same validation numbers so they can never disagree."""

from __future__ import annotations

import json
import os

import numpy as np

from .data.labeled import LabeledData
from .report import RunReport, worst_examples


def final_log_record(est) -> dict:
    """The closing line of metrics.jsonl: the validation metrics as `evaluate --json` prints them."""
    return {"event": "final", "strategy": est.strategy_["name"], "backbone": est.spec_.name, **est.metrics_}


def run_report(est, val: LabeledData, scores: np.ndarray, ok: np.ndarray) -> RunReport:
    """The report of a fitted estimator, from its validation scores (as `_raw_scores` returns them)."""
    run = RunReport(title=f"{est.spec_.name} / {est.strategy_['name']} ({est.modality}, {est._task})",
                    history=est.history_, metrics=est.metrics_["validation"], classes=est.classes_,
                    reasons=[*(est.advice_.reasons if getattr(est, "advice_", None) else []), *_refit_line(est)],
                    data=est.data_summary_)
    if est._task == "classification" and ok.any():
        keep = np.flatnonzero(ok)
        targets, proba = val.targets[keep].astype(int), scores[keep]
        run.calibration = (targets, proba)
        run.worst = worst_examples([val.items[i] for i in keep], targets, proba, est.classes_, est.modality)
    comparison = os.path.join(est.out_dir, "comparison.json")  # `compare` run into the same folder
    if os.path.exists(comparison):
        with open(comparison) as f:
            run.comparison = json.load(f)
    return run


def _refit_line(est) -> list[str]:
    refit = est.metrics_.get("refit")
    if not refit:
        return []
    return [f"the head was refitted on all {refit['rows']} labeled rows (training + validation) at C={refit['C']} "
            "once the plan was settled; the validation numbers above are from the fit that held them out"]
