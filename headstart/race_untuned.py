"""`auto`: a tuned or fine-tuned backbone races the untuned backbone's probe on the held-out rows.

After `setfit`, or a fine-tune with no probe stage to fall back to (races_frozen_probe: `full` from a fresh head,
texts' Trainer's recipe or images' plan for large data unlike the source), the probe the advisor measured on the
frozen backbone (what strategy `features` fits) is fitted on the same training rows and raced on the validation
rows, paired; it ships when better by more than VALIDATION_MARGIN_SE standard errors. frozen_head_seconds
estimates what such a frozen-feature head costs before it runs (race.announce_plan counts it too). The
no-transfer race that follows is race.py's.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .backbones import create_backbone
from .data.labeled import LabeledData
from .heads import HeadConfig, TransferModel, build_head
from .inference import embed, feature_cache_for
from .modalities import modality_of
from .probe import fit_probe
from .progress import say
from .verdicts import VALIDATION_MARGIN_SE, candidate_lines, challenger_wins, interval, paired, row_scores


def _frozen_features(est, backbone, items: list) -> tuple[np.ndarray, np.ndarray]:
    """`backbone`'s features of `items` at the estimator's batch, worker and cache settings, quietly."""
    return embed(backbone, items, batch_size=est.batch_size, num_workers=est.num_workers, use_cache=est.use_cache,
                 cache_dir=est.cache_dir, verbose=False)


def races_frozen_probe(est, stages: list) -> bool:
    """A classification plan under `auto` whose every stage trains the backbone (`full` from a fresh head: texts'
    Trainer's recipe, images' plan for large data unlike the source): nothing in it falls back to the probe the
    advisor measured, so that probe races it (race_frozen_probe). Seen fail without it: under a time limit that cut
    a text `full` short, a model below chance shipped. For images the probe reads every image's frozen features: a
    forward pass each, a small part of a fine-tune's epochs of forward and backward passes."""
    return (est.strategy == "auto" and est._task == "classification" and bool(stages)
            and all(not stage.backbone_frozen for stage in stages))


def race_frozen_probe(est, train: LabeledData, val: LabeledData, tuned: tuple[np.ndarray, np.ndarray],
                      tuned_seconds: float, rows_from: str = "held-out rows") -> tuple[np.ndarray, np.ndarray]:
    """`setfit` (or a fine-tune with no probe stage: races_frozen_probe) under `auto`: the untuned backbone's probe
    (what strategy `features` fits) on the same training rows, raced on the held-out (validation) rows against the
    tuned model (`tuned`: its validation scores), paired; it ships when better by more than VALIDATION_MARGIN_SE
    standard errors. Its features are usually in the cache already (the advisor measured them). Returns the
    shipped model's validation scores."""
    plan, setfit = est.strategy_["name"], est.strategy_["name"] == "setfit"
    tuned_as, part = "tuned" if setfit else "fine-tuned", "encoder" if est.modality == "text" else "backbone"
    backbone = create_backbone(est.spec_, pretrained=est.pretrained,
                               image_size=est.image_size if est.modality == "image" else None)
    estimate, how = frozen_head_seconds(est, backbone, [*train.items, *val.items])
    say(est.verbose, f"auto: candidate transfer (features on {est.spec_.name}, the {part} untuned): about "
        f"{estimate:.0f} s ({how})")
    started = time.perf_counter()
    (f_train, ok_train), (f_val, ok_val) = (_frozen_features(est, backbone, part.items) for part in (train, val))
    n = len(est.classes_)
    head = build_head(HeadConfig(kind="linear"), backbone.feature_dim, n).eval()
    chosen = fit_probe(head, torch.as_tensor(f_train[ok_train]), torch.as_tensor(train.targets[ok_train]), n, est.seed)
    scores = np.full((len(val), n), np.nan)
    with torch.no_grad():
        scores[ok_val] = torch.softmax(head(torch.as_tensor(f_val[ok_val]).float()), -1).numpy()
    seconds = time.perf_counter() - started
    both = tuned[1] & ok_val
    ours = row_scores("classification", val.targets[both], tuned[0][both])
    theirs = row_scores("classification", val.targets[both], scores[both])
    verdict = {**paired(ours, theirs), "rows_from": rows_from}
    ships = challenger_wins(verdict, VALIDATION_MARGIN_SE)
    measured = est.advice_.measurements if est.advice_ is not None else {}
    tuned_estimate = measured.get("setfit_seconds_estimate" if setfit else "plan_seconds_estimate")
    candidates = [{"candidate": name, "validation": round(float(rows.mean()), 4), "estimate": verdict["rows_from"],
                   "interval": interval(rows), "seconds": round(secs, 1), "estimate_s": guess, "shipped": shipped}
                  for name, rows, secs, guess, shipped in
                  [(f"transfer ({plan} on {est.spec_.name})", ours, tuned_seconds, tuned_estimate, not ships),
                   (f"transfer (features on {est.spec_.name}, the {part} untuned)", theirs, seconds,
                    round(estimate, 1), ships)]]
    gap = f"{100 * abs(verdict['difference']):.1f} points of accuracy"
    said = (f"the untuned {part}'s probe is better by {gap} on {verdict['rows']} {rows_from}; shipping it"
            if ships else f"kept the {tuned_as} {part}: on {verdict['rows']} {rows_from} the untuned one "
            + ("ties it" if verdict["difference"] == 0 else
               f"is {'ahead' if verdict['difference'] > 0 else 'behind'} by {gap}")
            + (f", within {VALIDATION_MARGIN_SE:g} standard errors: noise" if verdict["difference"] > 0 else ""))
    lines = [*candidate_lines(candidates, "accuracy"), said]
    if est.advice_ is not None:
        est.advice_.measurements["candidates"] = candidates
        est.advice_.measurements["race_untuned"] = {k: round(v, 5) if isinstance(v, float) else v
                                                    for k, v in verdict.items()}
        est.advice_.reasons.extend(lines[:-1] + [f"-> {said}"])
    for line in lines:
        say(est.verbose, f"auto: {line}")
    if not ships:
        return tuned
    est.model_, est.backbone_trained_ = TransferModel(backbone, head).eval(), False
    est.strategy_ = {"name": "features", "stages": [{"name": "head", "epochs": 1}]}
    est.history_.append({"stage": "head", "epoch": 1, "solver": "logistic regression (L-BFGS)", "probe": chosen,
                         "seconds": round(seconds, 3), "candidate": "features"})
    return scores, ok_val


def frozen_head_seconds(est, backbone, items: list) -> tuple[float, str]:
    """Seconds a head on `backbone`'s frozen features would take: the inputs not yet in the feature cache at the
    advisor's measured forward time per input, plus a second for the solve. (estimate, how it was made)."""
    if est.use_cache and backbone.cache_features:
        _, found = feature_cache_for(backbone, est.cache_dir).get(modality_of(backbone).digests(items))
    else:
        found = np.zeros(len(items), dtype=bool)
    missing = int((~np.asarray(found, dtype=bool)).sum())
    per_item = est.advice_.measurements.get("seconds_per_item_forward", 0.0) if est.advice_ is not None else 0.0
    return per_item * missing + 1.0, (f"{len(items) - missing} of {len(items)} inputs' features cached, the rest at "
                                      f"the measured {1000 * per_item:.1f} ms each, then the head solved")
