"""The few-shot benchmark: N-way K-shot episodes drawn from a labeled set, on cached features: prototypes
(fewshot.PrototypeHead) vs logistic regression on the same features (every episode) vs fine-tuning from the K shots
and, for texts, SetFit-style tuning (the first few episodes: they cost far more). `headstart fewshot-eval` runs it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from ..backbones import create_backbone, resolve_backbone
from ..data.detect import detect_modality
from ..data.labeled import LabeledData
from ..errors import DataError
from ..estimator import estimator_class
from ..inference import embed
from ..modalities import MODALITIES
from ..progress import make_progress, say
from .classical import fit_classical
from .fewshot import PrototypeHead


def prototype_accuracy(support: np.ndarray, support_y: np.ndarray, query: np.ndarray, query_y: np.ndarray) -> float:
    head = PrototypeHead(support.shape[1], int(support_y.max()) + 1)
    head.set_prototypes(torch.as_tensor(support), torch.as_tensor(support_y))
    with torch.no_grad():
        predicted = head(torch.as_tensor(query)).argmax(-1).numpy()
    return float((predicted == query_y).mean())


def _interval(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    half = 1.96 * arr.std(ddof=1) / np.sqrt(len(arr)) if len(arr) > 1 else float("nan")
    return {"mean": round(float(arr.mean()), 4), "ci95": round(float(half), 4), "episodes": len(arr)}


def draw_episode(labels: np.ndarray, ways: int, shots: int, queries: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class ids, then support and query rows with labels re-numbered 0..ways-1 in the order of the classes."""
    classes = rng.choice(np.unique(labels), ways, replace=False)
    s_rows, q_rows = [], []
    for c in classes:
        rows = rng.permutation(np.flatnonzero(labels == c))
        s_rows.append(rows[:shots])
        q_rows.append(rows[shots:shots + queries])
    s_y = np.repeat(np.arange(ways), [len(r) for r in s_rows])
    q_y = np.repeat(np.arange(ways), [len(r) for r in q_rows])
    return classes, np.concatenate(s_rows), s_y, np.concatenate(q_rows), q_y


def fewshot_eval(data, *, ways: int = 5, shots: Sequence[int] = (1, 5, 10), episodes: int = 100, queries: int = 15,
                 backbone: str | None = None, modality: str = "auto", image_size: int | None = None,
                 finetune_episodes: int = 3, finetune_strategy: str = "two-stage", epochs: int = 3, seed: int = 0,
                 verbose: bool = True) -> dict:
    """N-way K-shot accuracy (mean and 95% interval over episodes) for each K in `shots`.

    Every episode scores the prototype classifier and logistic regression on the same cached features; the first
    `finetune_episodes` also fine-tune the backbone from the K shots (`finetune_strategy`, validated on the
    support set itself, there being nothing else) and, for text, tune it SetFit-style: costly, hence fewer.
    """
    if modality == "auto":
        modality = detect_modality(str(data)) if not isinstance(data, LabeledData) else "image"
    columns = {"text": "text", "label": "label"} if modality == "text" else {"path": "path", "label": "label"}
    labeled = MODALITIES[modality].load(data, "classification", False, columns)
    counts = np.bincount(labeled.targets, minlength=len(labeled.classes))
    enough = int((counts > max(shots)).sum())
    if ways < 2 or enough < ways:
        raise DataError(f"{labeled.source}: {ways}-way {max(shots)}-shot episodes need {ways} classes with more than "
                        f"{max(shots)} examples, found {enough}; lower --ways or --shots")
    spec = resolve_backbone(backbone or ("minilm_l6" if modality == "text" else "efficientnet_lite0"), modality)
    net = create_backbone(spec, image_size=image_size if modality == "image" else None)
    feats, ok = embed(net, labeled.items, verbose=verbose)
    usable = np.flatnonzero(ok)
    labels = labeled.targets[usable]
    estimator = estimator_class(modality, "classification")
    expensive = {"finetune": finetune_strategy, **({"setfit": "fewshot"} if modality == "text" else {})}
    results: dict = {"data": labeled.source, "backbone": spec.name, "ways": ways, "queries": queries,
                     "episodes": episodes, "shots": {}}
    rng = np.random.default_rng(seed)
    for k in shots:
        scores: dict[str, list[float]] = {"prototype": [], "logistic": [], **{m: [] for m in expensive}}
        seconds: dict[str, float] = dict.fromkeys(scores, 0.0)
        with make_progress(verbose) as bar:
            task = bar.add_task(f"{ways}-way {k}-shot", total=episodes, info="")
            for e in range(episodes):
                classes, s, s_y, q, q_y = draw_episode(labels, ways, k, queries, rng)
                t = time.perf_counter()
                scores["prototype"].append(prototype_accuracy(feats[usable[s]], s_y, feats[usable[q]], q_y))
                seconds["prototype"] += time.perf_counter() - t
                t = time.perf_counter()
                clf = fit_classical("logistic", feats[usable[s]], s_y, seed)
                scores["logistic"].append(float((clf.predict(feats[usable[q]]) == q_y).mean()))
                seconds["logistic"] += time.perf_counter() - t
                if e < finetune_episodes:
                    names = [labeled.classes[c] for c in classes]
                    support = LabeledData([labeled.items[i] for i in usable[s]], s_y, names, source="support")
                    query = LabeledData([labeled.items[i] for i in usable[q]], q_y, names, source="query")
                    for method, strategy in expensive.items():
                        t = time.perf_counter()
                        model = estimator(backbone=spec.name, strategy=strategy, epochs=epochs, seed=seed + e,
                                          image_size=image_size, batch_size=16, verbose=False)
                        model.fit(support, valid=support)
                        scores[method].append(model.evaluate(query)["accuracy"])
                        seconds[method] += time.perf_counter() - t
                bar.update(task, advance=1, info=f"prototype {np.mean(scores['prototype']):.3f}")
        row = {m: {**_interval(v), "seconds_per_episode": round(seconds[m] / len(v), 4)} for m, v in scores.items()
               if v}
        results["shots"][str(k)] = row
        say(verbose, f"{ways}-way {k}-shot: " + "; ".join(
            f"{m} {r['mean']:.3f} ± {r['ci95']:.3f} (n={r['episodes']})" for m, r in row.items()))
    return results
