"""`auto` never ships a model worse than the no-transfer model it measured: the two race on validation.

After the transferred model's plan has run, the no-transfer candidate (strategy `baseline`: the same solved linear
head on grey pixels or TF-IDF, backbones/scratch.py) is fitted on the same training rows. Where both are solved heads
on frozen inputs (a plan that ended with the probe, ridge or one-vs-rest head), both are scored out of fold on the
same folds of every labeled row, training and validation together; otherwise on the validation rows.
The per-row differences between the two (correct or not; squared error for regression; labels right for
multi-label) are paired, so their standard error measures the comparison's noise. The baseline is shipped when it
is better by more than SHIP_MARGIN_SE standard errors out of fold (0, fitted on the suite: the better point
estimate), VALIDATION_MARGIN_SE on validation rows alone (1, not yet fitted); otherwise the transferred model stays,
and both candidates, with their scores, intervals and times, are in the reasons and the report.
Before this race, a text encoder tuned or fine-tuned with no probe to fall back on races its untuned probe
(race_untuned.py). announce_plan prints the chosen plan's estimated time before it runs.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .advisor_measures import time_forward
from .backbones import create_backbone, scratch_spec
from .blend import applies, race_blend
from .data.labeled import LabeledData
from .heads import HeadConfig, TransferModel, build_head
from .plan_runner import run_plan
from .probe import cross_validated_proba, is_probe_head
from .probe_heads import cross_validated_predictions
from .progress import say
from .race_untuned import _frozen_features, frozen_head_seconds, races_frozen_probe
from .strategies import Baseline
from .verdicts import (
    SHIP_MARGIN_SE,
    UNITS,
    VALIDATION_MARGIN_SE,
    candidate_lines,
    challenger_wins,
    interval,
    paired,
    row_scores,
)


def fit_baseline(est, train: LabeledData, val: LabeledData, loop) -> tuple[TransferModel, list[dict], dict]:
    """The no-transfer candidate, fitted on `train` as strategy `baseline` fits it: (model, history, strategy)."""
    backbone = create_backbone(scratch_spec(est.modality, train.items), pretrained=False)
    head = build_head(HeadConfig(kind=est.head), backbone.feature_dim, max(1, len(est.classes_)))
    model = TransferModel(backbone, head)
    strategy = Baseline()
    stages = strategy.plan(backbone.group_names(), est.epochs, est.lr, est.head_epochs)
    kept, est.history_ = est.history_, []  # run_plan appends to the estimator's history: keep the two apart
    try:
        run_plan(est, model, stages, train, val, is_probe_head(head), loop, None, None)
    finally:
        history, est.history_ = est.history_, kept
    for record in history:
        record["candidate"] = "baseline"
    return model.eval(), history, {"name": strategy.name, "stages": [s.to_dict() for s in stages]}


def race_baseline(est, train: LabeledData, val: LabeledData, transferred: tuple[np.ndarray, np.ndarray],
                  transferred_seconds: float, loop) -> tuple[np.ndarray, np.ndarray]:
    """Fit the baseline, compare it with the transferred model (its validation scores: `transferred`) out of fold
    or on the validation rows (the module's docstring says which when), and install it in `est` when it wins.
    Returns the shipped model's validation scores."""
    for line in stage_lines(est.history_):
        say(est.verbose, f"auto: {line}")
        if est.advice_ is not None:
            est.advice_.reasons.append(line)
    baseline_estimate = estimate_baseline_seconds(est, train, val)
    if loop.deadline is not None and time.perf_counter() + baseline_estimate > loop.deadline:
        said = (f"no time left under the time limit for the no-transfer candidate (about {baseline_estimate:.0f} "
                "s): not raced")
        say(est.verbose, f"auto: {said}")
        if est.advice_ is not None:
            est.advice_.reasons.append(f"-> {said}")
        return transferred
    say(est.verbose, f"auto: candidate no transfer: about {baseline_estimate:.0f} s "
        "(its inputs prepared once, timed on a sample, then the head solved)")
    started = time.perf_counter()
    model, history, plan = fit_baseline(est, train, val, loop)
    challenger = est._head_scores(model, val.items)
    folds = _cross_validated_rows(est, model, history, train, val)
    if folds is not None:  # both are probes on frozen inputs: compare them on every labeled row, out of fold
        ours, theirs = folds["rows"]
        verdict = {**paired(ours, theirs), "rows_from": "cross-validation on training + validation rows"}
    else:
        targets = est._target_tensor(val.targets).numpy() if est._task == "regression" else val.targets
        both = transferred[1] & challenger[1]
        ours = row_scores(est._task, targets[both], transferred[0][both])
        theirs = row_scores(est._task, targets[both], challenger[0][both])
        verdict = {**paired(ours, theirs), "rows_from": "validation rows"}
    seconds = time.perf_counter() - started
    margin = SHIP_MARGIN_SE if folds is not None else VALIDATION_MARGIN_SE
    ships = challenger_wins(verdict, margin)
    sign = -1 if est._task == "regression" else 1  # shown as mean squared error: lower is better
    unit = UNITS[est._task]
    transferred_name = f"transfer ({est.strategy_['name']} on {est.spec_.name})"
    baseline_name = f"no transfer ({model.backbone.spec.description.removeprefix('no transfer: ')})"
    planned = est.advice_.measurements.get("plan_seconds_estimate") if est.advice_ is not None else None
    candidates = [{"candidate": name, "validation": round(sign * float(rows.mean()), 4),
                   "estimate": verdict["rows_from"], "interval": sorted(sign * v for v in interval(rows)),
                   "seconds": round(secs, 1), "estimate_s": guess, "shipped": shipped}
                  for name, rows, secs, guess, shipped in
                  [(transferred_name, ours, transferred_seconds, planned, not ships),
                   (baseline_name, theirs, seconds, round(baseline_estimate, 1), ships)]]
    gap = (f"{abs(verdict['difference']):.3f} in {unit}" if sign < 0
           else f"{100 * abs(verdict['difference']):.1f} points of {unit}")
    if ships:
        said = (f"transfer does not pay on this data: the from-scratch model is better by {gap} on "
                f"{verdict['rows']} {verdict['rows_from']} ({verdict['difference'] / verdict['standard_error']:.1f} "
                "standard errors); shipping it")
    else:
        ahead, tied = verdict["difference"] > 0, verdict["difference"] == 0
        said = (f"kept the transferred model: on {verdict['rows']} {verdict['rows_from']} the from-scratch model "
                + ("ties it" if tied else f"is {'ahead' if ahead else 'behind'} by {gap}")
                + (f", within {margin:g} standard errors: noise" if ahead else ""))
    if est.advice_ is not None:
        earlier = est.advice_.measurements.get("candidates", [])  # raced before: the transferred one is among them
        if earlier:
            candidates = candidates[1:]
            for c in earlier:
                c["shipped"] = c["shipped"] and not ships
        est.advice_.measurements["candidates"] = earlier + candidates
        est.advice_.measurements["race"] = {k: round(v, 5) if isinstance(v, float) else v for k, v in verdict.items()}
        est.advice_.reasons.extend(candidate_lines(candidates, unit) + [f"-> {said}"])
    for line in [*candidate_lines(candidates, unit), said]:
        say(est.verbose, f"auto: {line}")
    transferred_model, transferred_plan = est.model_, est.strategy_
    if ships:
        est.model_, est.spec_, est.backbone_trained_ = model, model.backbone.spec, False
        est.strategy_ = plan
        est.history_.extend(history)
    shipped = challenger if ships else transferred
    if applies(est, folds):
        blended = race_blend(est, folds, theirs if ships else ours, (transferred_model, model), transferred_plan,
                             train, val)
        shipped = shipped if blended is None else blended
    return shipped


def stage_lines(history: list[dict]) -> list[str]:
    """Each stage of a multi-stage plan as the candidate it was: its best validation accuracy, time, and whether
    the next stage kept it (a fine-tune that never beat its start keeps the probe it started from)."""
    stages: dict[str, list[dict]] = {}
    for record in history:
        if "val_accuracy" in record:  # stages scored on validation (not, e.g., setfit's tuning passes)
            stages.setdefault(record["stage"], []).append(record)
    if len(stages) < 2:
        return []
    lines = []
    for name, records in stages.items():
        best = max(r.get("val_accuracy", 0.0) for r in records)
        seconds = sum(r.get("seconds", 0.0) for r in records)
        kept = " (kept its start: the stage before it ships)" if records[-1].get("kept_start") else ""
        lines.append(f"stage {name}: best validation accuracy {best:.3f}, {seconds:.1f} s{kept}")
    return lines


def estimate_baseline_seconds(est, train: LabeledData, val: LabeledData, sample: int = 16) -> float:
    """Seconds to prepare every input once (timed on an evenly spread sample, so long texts count), plus the
    head's solve, taken as the transferred model's own probe time where it had one (it is of the same size)."""
    items = list(train.items)
    if not items:
        return 0.0
    picks = np.linspace(0, len(items) - 1, min(sample, len(items))).astype(int)
    spec = scratch_spec(est.modality, [items[i] for i in picks])
    backbone = create_backbone(spec, pretrained=False)
    dataset = est._modality.dataset([items[i] for i in picks], None, backbone, False)
    collate = est._modality.collate(backbone)
    started = time.perf_counter()
    batch = collate([dataset[i] for i in range(len(picks))])
    if batch[1] is not None:
        backbone(batch[1])
    per_item = (time.perf_counter() - started) / len(picks)
    solve = next((r.get("seconds", 1.0) for r in est.history_ if r.get("probe")), 1.0)
    return per_item * (len(train) + 2 * len(val)) + solve  # validation inputs: for the fit, then for the race


def _cross_validated_rows(est, model: TransferModel, history: list[dict], train: LabeledData,
                          val: LabeledData) -> dict | None:
    """Per-row scores (row_scores) of both models (`rows`), their outputs (`outputs`: probabilities or values),
    the `targets` scored against and the penalties `chosen`, out of fold, on the same folds of every labeled row,
    when both are solved heads on frozen inputs (backbone untouched): five times the rows of a fifth held out, so the
    comparison's noise is smaller (at 10 per class, 80 rows rather than 20). Classification: stratified folds,
    logistic regression at each model's C; regression and multi-label: shuffled folds, ridge at its alpha or
    one-vs-rest at its Cs (probe_heads.cross_validated_predictions). None where that does not hold: then the
    validation rows decide."""
    if est.backbone_trained_:
        return None
    ours_chosen = next((r["probe"] for r in reversed(est.history_) if "probe" in r), None)
    theirs_chosen = next((r["probe"] for r in reversed(history) if "probe" in r), None)
    if ours_chosen is None or theirs_chosen is None:
        return None
    items, targets = [*train.items, *val.items], np.concatenate([train.targets, val.targets])
    feats = [_frozen_features(est, backbone, items) for backbone in (est.model_.backbone, model.backbone)]
    both = feats[0][1] & feats[1][1]
    outputs = []
    for (f, _), chosen in zip(feats, (ours_chosen, theirs_chosen)):
        x = torch.as_tensor(f[both])
        if est._task == "classification":
            scored_against = targets[both]
            proba, scored = cross_validated_proba(x, torch.as_tensor(scored_against), len(est.classes_), chosen,
                                                  est.seed)
            if not scored.all():
                return None
            outputs.append(proba)
        else:  # the targets the heads were solved on: standardised for regression
            y = est._target_tensor(targets[both])
            scored_against = y.numpy().reshape(len(y), -1)
            outputs.append(cross_validated_predictions(est._task, x, y, chosen, est.seed))
    return {"rows": tuple(row_scores(est._task, scored_against, out) for out in outputs), "outputs": tuple(outputs),
            "targets": scored_against, "chosen": (ours_chosen, theirs_chosen)}


def announce_plan(est, backbone, stages: list, train: LabeledData, val: LabeledData, loop, started: float):
    """`auto`: print the chosen plan's estimated time before it runs, and keep it (measurements
    `plan_seconds_estimate`) so the race can show it beside the measured time: the frozen-feature part as
    frozen_head_seconds, plus the advisor's fine-tune estimate where a stage trains the backbone. With a
    `time_limit`, the loop's deadline, keeping back what the work after training is estimated to take. Returns
    the loop settings to train with."""
    if est.time_limit is not None:
        from dataclasses import replace

        per_item = est.advice_.measurements.get("seconds_per_item_forward") if est.advice_ is not None else None
        if per_item is None:  # an explicit strategy: nothing measured yet
            per_item = time_forward(backbone, est._modality, list(val.items or train.items), seed=est.seed)
        # after the last batch: a validation pass, the validation rows scored, the no-transfer candidate, the
        # frozen probe where it races (races_frozen_probe) and slack
        frozen = frozen_head_seconds(est, backbone, [*train.items, *val.items])[0] if races_frozen_probe(
            est, stages) else 0.0
        loop = replace(loop, deadline=started + est.time_limit, reserve_s=2 * len(val) * per_item
                       + estimate_baseline_seconds(est, train, val) + frozen + 0.03 * est.time_limit)
    if est.advice_ is None:
        return loop
    estimate, how = frozen_head_seconds(est, backbone, [*train.items, *val.items])
    if any(not stage.backbone_frozen for stage in stages):
        estimate += est.advice_.measurements.get("finetune_seconds_estimate", 0.0)
        how += "; the fine-tune as estimated above"
    est.advice_.measurements["plan_seconds_estimate"] = round(estimate, 1)
    say(est.verbose, f"auto: candidate transfer ({est.advice_.strategy} on {backbone.spec.name}): about "
        f"{estimate:.0f} s ({how})")
    return loop
