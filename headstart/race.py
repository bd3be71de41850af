"""`auto` never ships a model worse than the no-transfer model it measured: the two race on validation.

After the transferred model's plan has run, the no-transfer candidate (strategy `baseline`: the same solved linear
head on grey pixels or TF-IDF, backbones/scratch.py) is fitted on the same training rows and scored on the same
validation rows. The per-row differences between the two (correct or not; squared error for regression; labels
right for multi-label) are paired, so their standard error measures the comparison's noise. The baseline is
shipped when it is better by more than one standard error (SHIP_MARGIN_SE); otherwise the transferred model stays,
and both candidates, with their validation scores, intervals and times, are in the reasons and the report.
"""

from __future__ import annotations

import time

import numpy as np

from .backbones import create_backbone, scratch_spec
from .data.labeled import LabeledData
from .heads import HeadConfig, TransferModel, build_head
from .progress import say
from .strategies import Baseline

# Not yet fitted on a suite (issue "auto measured"): one standard error of the paired differences is the usual
# "beyond noise" rule; with no difference at all the cheaper-to-explain transferred model stays.
SHIP_MARGIN_SE = 1.0
UNITS = {"classification": "accuracy", "multilabel": "label accuracy",
         "regression": "mean squared error (standardised targets)"}


def row_scores(task: str, targets: np.ndarray, scores: np.ndarray, thresholds: np.ndarray | None = None
               ) -> np.ndarray:
    """One number per row, higher is better: 1/0 correct (classification), the share of labels right
    (multi-label), minus the squared error on standardised targets (regression)."""
    if task == "classification":
        return (scores.argmax(1) == targets).astype(np.float64)
    if task == "multilabel":
        cut = 0.5 if thresholds is None else thresholds
        return ((scores >= cut) == (targets >= 0.5)).mean(1).astype(np.float64)
    return -((scores.reshape(-1) - targets.reshape(-1)) ** 2).astype(np.float64)


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of b - a over the rows both scored, its standard error and the row count."""
    d = b - a
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    return {"difference": float(d.mean()) if len(d) else 0.0, "standard_error": se, "rows": int(len(d))}


def _interval(values: np.ndarray) -> list[float]:
    """Mean +- 1.96 standard errors of per-row scores: a 95% interval for the validation figure."""
    if len(values) < 2:
        return [float(values.mean()) if len(values) else 0.0] * 2
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    return [round(float(values.mean() - half), 4), round(float(values.mean() + half), 4)]


def fit_baseline(est, train: LabeledData, val: LabeledData, loop) -> tuple[TransferModel, list[dict], dict]:
    """The no-transfer candidate, fitted on `train` as strategy `baseline` fits it: (model, history, strategy)."""
    from .plan_runner import run_plan

    backbone = create_backbone(scratch_spec(est.modality, train.items), pretrained=False)
    head = build_head(HeadConfig(kind=est.head), backbone.feature_dim, max(1, len(est.classes_)))
    model = TransferModel(backbone, head)
    strategy = Baseline()
    stages = strategy.plan(backbone.group_names(), est.epochs, est.lr, est.head_epochs)
    kept, est.history_ = est.history_, []  # run_plan appends to the estimator's history: keep the two apart
    try:
        run_plan(est, model, stages, train, val, est._solved_head(head), loop, None, None)
    finally:
        history, est.history_ = est.history_, kept
    for record in history:
        record["candidate"] = "baseline"
    return model.eval(), history, {"name": strategy.name, "stages": [s.to_dict() for s in stages]}


def race_baseline(est, train: LabeledData, val: LabeledData, transferred: tuple[np.ndarray, np.ndarray],
                  transferred_seconds: float, loop) -> tuple[np.ndarray, np.ndarray]:
    """Fit the baseline, compare it with the transferred model (its validation scores: `transferred`) on the
    validation rows, and install it in `est` when it wins. Returns the shipped model's validation scores."""
    started = time.perf_counter()
    model, history, plan = fit_baseline(est, train, val, loop)
    challenger = est._head_scores(model, val.items)
    seconds = time.perf_counter() - started
    targets = est._target_tensor(val.targets).numpy() if est._task == "regression" else val.targets
    both = transferred[1] & challenger[1]
    ours = row_scores(est._task, targets[both], transferred[0][both])
    theirs = row_scores(est._task, targets[both], challenger[0][both])
    verdict = paired(ours, theirs)
    ships = verdict["difference"] > 0 and verdict["difference"] > SHIP_MARGIN_SE * verdict["standard_error"]
    sign = -1 if est._task == "regression" else 1  # shown as mean squared error: lower is better
    unit = UNITS[est._task]
    transferred_name = f"transfer ({est.strategy_['name']} on {est.spec_.name})"
    baseline_name = f"no transfer ({model.backbone.spec.description.removeprefix('no transfer: ')})"
    candidates = [{"candidate": name, "validation": round(sign * float(rows.mean()), 4),
                   "interval": sorted(sign * v for v in _interval(rows)), "seconds": round(secs, 1), "shipped": shipped}
                  for name, rows, secs, shipped in [(transferred_name, ours, transferred_seconds, not ships),
                                                    (baseline_name, theirs, seconds, ships)]]
    gap = (f"{abs(verdict['difference']):.3f} in {unit}" if sign < 0
           else f"{100 * abs(verdict['difference']):.1f} points of {unit}")
    if ships:
        said = (f"transfer does not pay on this data: the from-scratch model is better by {gap} on "
                f"{verdict['rows']} validation rows ({verdict['difference'] / verdict['standard_error']:.1f} "
                "standard errors); shipping it")
    else:
        ahead = verdict["difference"] > 0
        said = (f"kept the transferred model: on {verdict['rows']} validation rows the from-scratch model is "
                f"{'ahead' if ahead else 'behind'} by {gap}"
                + (f", within {SHIP_MARGIN_SE:g} standard error: noise" if ahead else ""))
    if est.advice_ is not None:
        est.advice_.measurements["candidates"] = candidates
        est.advice_.measurements["race"] = {k: round(v, 5) if isinstance(v, float) else v for k, v in verdict.items()}
        est.advice_.reasons.extend(_candidate_lines(candidates, unit) + [f"-> {said}"])
    for line in [*_candidate_lines(candidates, unit), said]:
        say(est.verbose, f"auto: {line}")
    if not ships:
        return transferred
    est.model_, est.spec_, est.backbone_trained_ = model, model.backbone.spec, False
    est.strategy_ = plan
    est.history_.extend(history)
    return challenger


def _candidate_lines(candidates: list[dict], unit: str) -> list[str]:
    return [f"candidate {c['candidate']}: validation {unit} {c['validation']:.3f} "
            f"(95% interval {c['interval'][0]:.3f}-{c['interval'][1]:.3f}), {c['seconds']:.1f} s" for c in candidates]
