"""Transferability before training: how well a backbone's frozen features fit the target, measured three ways.

- LogME (You et al., ICML 2021): the log marginal evidence of a Bayesian linear model on the features, per
  class (one-vs-rest targets), averaged. Higher is better; comparable across backbones on the same data.
- LEEP (Nguyen et al., ICML 2020): how well the source classifier's predictions, mapped to target labels
  through their empirical joint distribution, explain the target labels. Only where the source head exists.
- Cross-validated linear-probe accuracy: logistic regression on standardised features at a fixed C, stratified
  folds, solved by the head stage's own solver (probe.fixed_c_predictions).
All three read cached features, so ranking after a fit (or fitting after a ranking) costs no extra forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from .backbones import create_backbone, resolve_backbone
from .inference import embed
from .modalities import MODALITIES
from .probe import fixed_c_predictions

PROBE_C = 0.5  # the probe's fixed L2 strength, in scikit-learn's convention (C x summed log loss + |W|^2 / 2)


def logme(features: np.ndarray, labels: np.ndarray, iterations: int = 11, gram: bool | None = None) -> float:
    """LogME of integer class labels given features (N, D), by the paper's fixed-point evidence maximisation.
    `gram`: take the spectrum from the N x N Gram matrix instead of the D x D covariance; by default when N < D,
    where it is the same nonzero spectrum, cheaper (80 x 1,280 features: 0.2 s -> a few ms)."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    classes = np.unique(labels)
    targets = (np.asarray(labels)[:, None] == classes[None, :]).astype(np.float64)  # one-vs-rest, [N, classes]
    if n < d if gram is None else gram:
        s, u = np.linalg.eigh(f @ f.T)  # F F^T = U S U^T; the weights live in F^T's column space
        to_weights, projections = f.T @ u, u.T @ targets  # weights = F^T U c; y's coordinates are U^T y
    else:
        s, v = np.linalg.eigh(f.T @ f)  # F^T F = V S V^T
        to_weights, projections = v, v.T @ (f.T @ targets)  # weights = V c; y's coordinates are V^T F^T y
    s = np.clip(s, 0, None)
    unseen = d - len(s)  # directions F never spans (eigenvalue 0): each adds log(alpha) to the log-determinant
    evidences = []
    for y, proj in zip(targets.T, projections.T):
        alpha, beta = 1.0, 1.0
        for _ in range(iterations):
            gamma = float((beta * s / (alpha + beta * s)).sum())
            m = to_weights @ (proj * beta / (alpha + beta * s))  # posterior mean of the weights
            alpha_de = float(m @ m)
            beta_de = float(((y - f @ m) ** 2).sum())
            new_alpha = gamma / (alpha_de + 1e-5)
            new_beta = (n - gamma) / (beta_de + 1e-5)
            converged = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 0.01
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        log_det = np.log(alpha + beta * s).sum() + unseen * np.log(alpha)
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det
                    - beta / 2 * beta_de - alpha / 2 * alpha_de - n / 2 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP score from source-class probabilities (N, Z) and target labels (N,). Higher is better, <= 0."""
    n = len(labels)
    classes = np.unique(labels)
    onehot = (labels[:, None] == classes[None, :]).astype(np.float64)
    joint = source_probs.T @ onehot / n  # (Z, Y): empirical P(z, y)
    conditional = joint / np.clip(joint.sum(axis=1, keepdims=True), 1e-12, None)  # P(y | z)
    expected = source_probs @ conditional  # (N, Y): P(y | x) through the source labels
    picked = expected[np.arange(n), np.searchsorted(classes, labels)]
    return float(np.mean(np.log(np.clip(picked, 1e-12, None))))


def cv_accuracy(model, x, labels: np.ndarray, folds: int = 3, seed: int = 0) -> float:
    """Mean stratified cross-validated accuracy of a scikit-learn `model` (fewer folds when a class is smaller), on
    probe_accuracy's folds: the raw-input reference on TF-IDF texts (advisor_measures.raw_input_accuracy)."""
    from sklearn.model_selection import cross_val_score
    from threadpoolctl import threadpool_limits

    cv = _folds(labels, folds, seed)
    # One BLAS thread: on solves this small, threads cost more than they share. On this 2-core CPU, 1,000 x 1,280
    # Lite0 features: 1.8-2.2 s with two threads, 0.63 s with one; 800 images as 16x16 pixels: 5.2 s against
    # 0.28 s; the same accuracies.
    with threadpool_limits(1):
        return float(cross_val_score(model, x, labels, cv=cv).mean())


def _folds(labels: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(max(2, min(folds, int(np.bincount(labels).min()))), shuffle=True, random_state=seed)


def _probe_predictions(features: np.ndarray, labels: np.ndarray, folds: int,
                       seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The folds' held-out rows and every row's out-of-fold label: logistic regression at PROBE_C on features
    standardised by each fold's fitting rows, what scikit-learn's make_pipeline(StandardScaler(),
    LogisticRegression(C=0.5, max_iter=300)) under cross_val_predict gives (tests/test_probe.py checks it does),
    by the head stage's solver (probe.fixed_c_predictions)."""
    labels = np.asarray(labels)
    held = [rows for _, rows in _folds(labels, folds, seed).split(np.zeros(len(labels)), labels)]
    return held, fixed_c_predictions(features, labels, held, PROBE_C)


def probe_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 3, seed: int = 0) -> float:
    """Mean cross-validated accuracy (the folds' mean, as scikit-learn's cross_val_score) of logistic regression on
    standardised features."""
    held, predicted = _probe_predictions(features, labels, folds, seed)
    return float(np.mean([np.mean(predicted[rows] == np.asarray(labels)[rows]) for rows in held]))


def probe_rows(features: np.ndarray, labels: np.ndarray, folds: int = 3, seed: int = 0) -> np.ndarray:
    """`probe_accuracy`'s model and folds, one number per row: 1 where its out-of-fold prediction is right. Two
    backbones scored on the same rows and seed share the folds, so their rows pair (verdicts.paired)."""
    _, predicted = _probe_predictions(features, labels, folds, seed)
    return (predicted == np.asarray(labels)).astype(np.float64)


def transferability(features: np.ndarray, labels: np.ndarray, source_head: torch.nn.Module | None = None,
                    seed: int = 0) -> dict:
    """LogME, LEEP (when a source head is given) and probe accuracy, each with the seconds it took."""
    out: dict = {}
    t = time.perf_counter()
    out["logme"] = logme(features, labels)
    out["logme_seconds"] = round(time.perf_counter() - t, 3)
    if source_head is not None:
        t = time.perf_counter()
        with torch.inference_mode():
            probs = source_head(torch.as_tensor(features)).softmax(-1).double().numpy()
        out["leep"] = leep(probs, labels)
        out["leep_seconds"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    out["probe_accuracy"] = probe_accuracy(features, labels, seed=seed)
    out["probe_seconds"] = round(time.perf_counter() - t, 3)
    return out


def rank(data, backbones: Sequence[str], modality: str | None = None, image_size: int | None = None,
         pretrained: bool = True, seed: int = 0, verbose: bool = True) -> list[dict]:
    """Score each candidate backbone on labeled `data` from frozen (cached) features; best (LogME) first.

    A candidate `NAME@random` is the same architecture with random weights: the no-transfer reference.
    """
    results = []
    for name in backbones:
        base, _, variant = name.partition("@")  # NAME@random: the same architecture, random weights
        spec = resolve_backbone(base, modality or "image")
        started = time.perf_counter()
        size = image_size if spec.modality == "image" else None
        backbone = create_backbone(spec, pretrained=pretrained and variant != "random", image_size=size,
                                   modality=spec.modality)
        labeled = MODALITIES[spec.modality].load(data, "classification", False, {})
        feats, ok = embed(backbone, labeled.items, verbose=verbose)
        scores = transferability(feats[ok], labeled.targets[ok], backbone.source_head, seed)
        results.append({"backbone": name, **scores, "n": int(ok.sum()),
                        "seconds": round(time.perf_counter() - started, 2)})
    return sorted(results, key=lambda r: r["logme"], reverse=True)
