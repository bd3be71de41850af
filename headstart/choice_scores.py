"""How `auto`'s backbone choice (backbone_choice.py) scores its candidates: each one's frozen features on the
subsample, its per-row probe scores (paired across candidates), LogME, cost and estimated fit, and the line the
reasons give it."""

from __future__ import annotations

import numpy as np

from .advisor import FINETUNE_COST
from .backbones import Backbone
from .inference import embed
from .input_size import label
from .rank import logme, probe_rows
from .verdicts import interval

SOLVE_SECONDS = 1.0  # the head's solve in a frozen-feature fit, as race_untuned.frozen_head_seconds counts it


def relative_cost(backbone: Backbone) -> float:
    """A forward pass's arithmetic, up to a constant, from the model alone: the weights each input meets, times
    the pixels for images (a convolution's weights meet every position); texts: the same tokens for every
    encoder. On this CPU it orders the candidates as their timings do (Lite0 < Lite1 < Lite2, MiniLM < mpnet)."""
    params = float(sum(p.numel() for p in backbone.parameters()))
    pre = backbone.spec.preprocess
    return params * (pre.size**2 if backbone.spec.modality == "image" else 1)


def features(est, backbone: Backbone, items: list) -> tuple[np.ndarray, np.ndarray]:
    """The subsample's frozen features through the cache (the chosen one's are read back by the fit)."""
    return embed(backbone, items, batch_size=est.batch_size, num_workers=est.num_workers, use_cache=est.use_cache,
                 cache_dir=est.cache_dir, verbose=False)


def scored(est, built: list[Backbone], feats: list, per_item: list[float], labels: np.ndarray, n_all: int,
           sized: bool) -> tuple[list[dict], np.ndarray]:
    """Each candidate's per-row probe scores, LogME, cost and estimates, on the rows every one of them read (the
    comparison is paired); `sized`: named `backbone @ size`."""
    ok = np.logical_and.reduce([k for _, k in feats])
    cached = int(ok.sum()) if est.use_cache else 0  # the chosen one's subsample is in the cache for the fit
    costs, cost = [relative_cost(b) for b in built], FINETUNE_COST.get(est.modality, 3)
    out = []
    for b, (f, _), secs, rel in zip(built, feats, per_item, costs):
        scores = probe_rows(f[ok], labels[ok], seed=est.seed)
        out.append({
            "name": b.spec.name, "label": label(b.spec.name, b.spec.preprocess.size if sized else None),
            "image_size": b.spec.preprocess.size if est.modality == "image" else None,
            "rows": scores, "accuracy": float(scores.mean()), "relative_cost": rel / min(costs),
            "interval": interval(scores), "logme": round(logme(f[ok], labels[ok]), 4),
            "seconds_per_item": secs, "fit_seconds_estimate": secs * max(n_all - cached, 0) + SOLVE_SECONDS,
            "finetune_seconds_estimate": cost * est.epochs * n_all * secs})
    return out, ok


def rounded(c: dict) -> dict:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in c.items() if k != "rows"}


def name_of(candidate: dict) -> str:
    return candidate.get("label", candidate["name"])  # `backbone @ size` for a smaller input size


def candidate_line(c: dict, rows: int, epochs: int) -> str:
    return (f"backbone {name_of(c)}: probe accuracy {c['accuracy']:.3f} (95% interval {c['interval'][0]:.3f}-"
            f"{c['interval'][1]:.3f}) on {rows} training rows, LogME {c['logme']:.3f}; cost {c['relative_cost']:.2f}x "
            f"the cheapest's, {1000 * c['seconds_per_item']:.1f} ms per input here, so about "
            f"{c['fit_seconds_estimate']:.0f} s for a head on frozen features "
            f"({c['finetune_seconds_estimate']:.0f} s to fine-tune {epochs} epoch(s))")
