"""What a fit leaves in its output folder: the bundle, the last line of `metrics.jsonl` and the report, the last
two built from the same validation numbers so they can never disagree. Every strategy's fit ends in
`write_run_outputs` (the plan in estimator.fit, `fewshot` and `setfit` in methods/fewshot.py), so every run folder holds
the same files."""

from __future__ import annotations

import json
import os

import numpy as np

from .data.labeled import LabeledData
from .progress import say
from .report import RunReport, worst_examples, write_report


def write_run_outputs(est, val: LabeledData, val_scores: tuple[np.ndarray, np.ndarray]) -> None:
    """`model.hs`, the closing line of `metrics.jsonl` (after the epochs the run logged there, see
    plan_runner.open_run_log) and `report/`, in `est.out_dir`. `val_scores`: the shipped model's scores on `val`
    as `_raw_scores` returns them. Callers write from the main process only."""
    bundle = est.save(os.path.join(est.out_dir, "model.hs"))
    with open(os.path.join(est.out_dir, "metrics.jsonl"), "a") as f:  # the same numbers as the report's
        f.write(json.dumps(final_log_record(est)) + "\n")
    report = write_report(os.path.join(est.out_dir, "report"), run_report(est, val, *val_scores))
    say(est.verbose, f"bundle: {bundle}\nreport: {report}")


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
