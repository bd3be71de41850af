"""The third candidate of `auto`'s race on texts: a blend of the transferred model and the no-transfer one.

When both are solved linear heads on frozen inputs (a pretrained encoder's features; TF-IDF), their outputs are
mixed - regression values averaged, class logits averaged (a product of the two models' probabilities) - at the
share of the transferred model that fits best out of fold. They make different mistakes (a sentence encoder reads
meaning, TF-IDF counts the exact words a data set repeats), so the mix is often better than either. Measured
(clothing reviews' rating as a number, MiniLM features and TF-IDF, scikit-learn's RidgeCV, 3 subsets, 500 test
reviews): test R^2 of the blend 0.307 / 0.372 / 0.400 at 500 training rows against 0.302 / 0.357 / 0.385 for
TF-IDF and 0.169 / 0.254 / 0.267 for the encoder; 0.450 / 0.529 / 0.469 at 2,000 against 0.420 / 0.501 / 0.436.

The blend is raced like the other two: its per-row scores out of fold, with the share chosen on the other folds'
rows (nested, so the figure is out of sample for the share too), paired against the shipped candidate's; it ships
when ahead by more than verdicts.SHIP_MARGIN_SE standard errors. A blend of two linear heads is one linear head on the
two feature vectors end to end (backbones/pair.py), so it ships, predicts, serves and reports as any model.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .backbones import pair_backbone, pair_spec
from .data.labeled import LabeledData
from .heads import HeadConfig, TransferModel, build_head
from .plan_runner import feature_loaders
from .probe_heads import refit_head
from .progress import say
from .verdicts import SHIP_MARGIN_SE, UNITS, candidate_lines, challenger_wins, interval, paired, row_scores

TASKS = ("classification", "regression")  # multi-label would need its thresholds chosen again on the mix
SHARES = np.round(np.linspace(0.1, 0.9, 9), 2)  # the transferred model's share; 0 and 1 are the two candidates
FOLDS = 5


def mix(task: str, ours: np.ndarray, theirs: np.ndarray, share: float) -> np.ndarray:
    """The blend's outputs from the two models' (classification: probabilities; regression: values)."""
    if task == "regression":
        return share * ours + (1 - share) * theirs
    logits = share * np.log(np.clip(ours, 1e-12, None)) + (1 - share) * np.log(np.clip(theirs, 1e-12, None))
    logits -= logits.max(1, keepdims=True)
    proba = np.exp(logits)
    return proba / proba.sum(1, keepdims=True)


def _fit(task: str, targets: np.ndarray, outputs: np.ndarray) -> float:
    """What the share maximises: the log-likelihood of the true class, or minus the squared error."""
    if task == "regression":
        return -float(((outputs.reshape(-1) - targets.reshape(-1)) ** 2).mean())
    return float(np.log(np.clip(outputs[np.arange(len(targets)), targets.astype(int)], 1e-12, None)).mean())


def best_share(task: str, targets: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(max(SHARES, key=lambda s: _fit(task, targets, mix(task, ours, theirs, s))))


def nested_outputs(task: str, targets: np.ndarray, ours: np.ndarray, theirs: np.ndarray, seed: int
                   ) -> np.ndarray:
    """The blend's out-of-fold outputs, each fold's rows mixed at the share that fits the other folds best."""
    rows = np.random.default_rng(seed).permutation(len(targets))
    out = np.zeros_like(ours, dtype=np.float64)
    for held in np.array_split(rows, min(FOLDS, len(rows))):
        rest = np.setdiff1d(rows, held)
        share = best_share(task, targets[rest], ours[rest], theirs[rest]) if len(rest) else 0.5
        out[held] = mix(task, ours[held], theirs[held], share)
    return out


def blend_head(ours: nn.Sequential, theirs: nn.Sequential, share: float) -> nn.Sequential:
    """One linear head on [our features, their features]: its output is `share` of ours plus the rest of theirs
    (logits for classes, values for regression), each part standardised as its own head standardises it."""
    (s_a, _, l_a), (s_b, _, l_b) = ours, theirs
    head = build_head(HeadConfig(kind="linear"), l_a.in_features + l_b.in_features, l_a.out_features)
    with torch.no_grad():
        head[0].mean.copy_(torch.cat([s_a.mean, s_b.mean]))
        head[0].std.copy_(torch.cat([s_a.std, s_b.std]))
        head[2].weight.copy_(torch.cat([share * l_a.weight, (1 - share) * l_b.weight], dim=1))
        head[2].bias.copy_(share * l_a.bias + (1 - share) * l_b.bias)
    for p in head.parameters():
        p.requires_grad_(False)
    return head.eval()


def applies(est, folds: dict | None) -> bool:
    """A blend is raced on texts, for classes or values, when both candidates were compared out of fold."""
    return folds is not None and est.modality == "text" and est._task in TASKS


def blend_candidate(est, folds: dict) -> tuple[np.ndarray, float]:
    """(the blend's outputs out of fold, nested; the share chosen on every row, which ships)."""
    (ours, theirs), targets = folds["outputs"], folds["targets"]
    return (nested_outputs(est._task, targets, ours, theirs, est.seed),
            best_share(est._task, targets, ours, theirs))


def install_blend(est, models: tuple[TransferModel, TransferModel], plan: dict, chosen: tuple[dict, dict],
                  share: float, train: LabeledData, val: LabeledData) -> tuple[np.ndarray, np.ndarray]:
    """Ship the blend: its validation scores from the heads fitted on the training rows (out of sample), then each
    head solved again on training + validation rows at its own penalty (as plan_runner.refit_final_probe does for
    one head) and mixed again. `plan`: the transferred model's strategy. Returns the validation scores."""
    transferred, baseline = models
    backbone = pair_backbone(pair_spec(transferred.backbone.spec, baseline.backbone.spec), transferred.backbone,
                             baseline.backbone)
    model = TransferModel(backbone, blend_head(transferred.head, baseline.head, share)).eval()
    val_scores = est._head_scores(model, val.items)
    refits = []
    if len(val):
        started = time.perf_counter()
        for part, choice in zip((transferred, baseline), chosen):
            parts = [loader.dataset.tensors[1:] for loader in feature_loaders(est, part.backbone, train, val, None)]
            refits.append(refit_head(est._task, part.head, parts, len(est.classes_), choice))
        model.head = blend_head(transferred.head, baseline.head, share)
        refit = {"rows": refits[0]["rows"], "parts": refits, "share": share,
                 "seconds": round(time.perf_counter() - started, 3)}
    else:
        refit = None
    est.model_, est.spec_, est.backbone_trained_ = model, backbone.spec, False
    est.strategy_ = {"name": "blend", "share": share, "parts": [plan, "baseline"],
                     "stages": [{"name": "head", "epochs": 1}], "refit": refit}
    est.history_.append({"stage": "blend", "candidate": "blend", "share": share})
    return val_scores


def race_blend(est, folds: dict, incumbent: np.ndarray, models: tuple[TransferModel, TransferModel], plan: dict,
               train: LabeledData, val: LabeledData) -> tuple[np.ndarray, np.ndarray] | None:
    """The blend of the two (blend.py) raced out of fold against the candidate that won (`incumbent`: its per-row
    scores); installed in `est` when it wins. Returns its validation scores then, else None."""
    started = time.perf_counter()
    outputs, share = blend_candidate(est, folds)
    rows = row_scores(est._task, folds["targets"], outputs)
    verdict = {**paired(incumbent, rows), "rows_from": "cross-validation on training + validation rows, the share "
               "chosen on the other folds"}
    ships = challenger_wins(verdict, SHIP_MARGIN_SE)
    sign, unit = (-1 if est._task == "regression" else 1), UNITS[est._task]
    gap = (f"{abs(verdict['difference']):.3f} in {unit}" if sign < 0
           else f"{100 * abs(verdict['difference']):.1f} points of {unit}")
    val_scores = install_blend(est, models, plan, folds["chosen"], share, train, val) if ships else None
    per_item = est.advice_.measurements.get("seconds_per_item_forward", 0.0) if est.advice_ is not None else 0.0
    candidate = {"candidate": f"blend ({share:g} transfer, {1 - share:g} no transfer)",
                 "validation": round(sign * float(rows.mean()), 4), "estimate": verdict["rows_from"],
                 "interval": sorted(sign * v for v in interval(rows)),
                 "seconds": round(time.perf_counter() - started, 1), "shipped": ships,
                 "estimate_s": round(len(val) * per_item + 1.0, 1) if ships else 0.1}  # shipping scores val rows
    said = (f"the blend is better than either by {gap} on {verdict['rows']} rows out of fold "
            f"({verdict['difference'] / verdict['standard_error']:.1f} standard errors); shipping it" if ships
            else "kept the better single model: the blend "
            + ("ties it" if verdict["difference"] == 0
               else f"is {'ahead' if verdict['difference'] > 0 else 'behind'} by {gap}"))
    lines = [*candidate_lines([candidate], unit), said]
    if est.advice_ is not None:
        for c in est.advice_.measurements.get("candidates", []):
            c["shipped"] = c["shipped"] and not ships
        est.advice_.measurements.setdefault("candidates", []).append(candidate)
        est.advice_.measurements["race_blend"] = {k: round(v, 5) if isinstance(v, float) else v
                                                  for k, v in verdict.items()}
        est.advice_.reasons.extend(lines[:-1] + [f"-> {said}"])
    for line in lines:
        say(est.verbose, f"auto: {line}")
    return val_scores
