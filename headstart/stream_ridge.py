"""The regression head on more feature rows than memory holds: probe_heads.fit_ridge with the rows streamed.

The same problem and the same choice: ridge with an unpenalised intercept on the head's scaled features, the
scaling (standardised, or as given) and alpha from probe_heads.ALPHA_GRID chosen together by exact leave-one-out
error. Where rows outnumber features (as above stream.STREAM_MIN_ROWS they do, for every backbone here),
fit_ridge's path is that of the centred Gram matrix Xc^T Xc and Xc^T y, summed here in float64 a batch at a
time (cache.ShardRows), then one eigendecomposition of that features x features matrix; each row's leave-one-out
residual needs its own hat diagonal, so a further pass sums their squares for every alpha at once. Passes: the
statistics, then for each scaling its means, Gram matrix and leave-one-out errors. Several processes sum their
passes (`distributed.all_reduce_sum`), as stream.py's logistic head does.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .cache import ShardRows
from .distributed import all_reduce_sum
from .probe_heads import ALPHA_GRID, _copy
from .stream import feature_statistics


def _targets(targets: np.ndarray, position: int, rows: int) -> torch.Tensor:
    """One batch's targets as float64 [rows, targets]: the caller's array stays as narrow as it is given."""
    y = torch.as_tensor(targets[position:position + rows], dtype=torch.float64)
    return y.reshape(rows, -1)


def _scaled(x: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A batch as the head computes it (float32, Standardize's arithmetic, in place), then float64 as
    ridge_path takes it."""
    return torch.from_numpy(x).sub_(mean).div_(std).double()


def streamed_ridge_path(source: ShardRows, targets: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
                        alphas: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """probe_heads.ridge_path on every process's rows scaled (x - mean) / std: (weights [alphas, features,
    targets], intercepts [alphas, targets], leave-one-out mean squared errors [alphas])."""
    targets = np.asarray(targets)
    d, t = source.dim, (targets.shape[1] if targets.ndim == 2 else 1)
    sums = torch.zeros(d + t + 1, dtype=torch.float64)  # features, targets, rows: the means, subtracted below
    for position, x in source.batches(reuse=True):
        sums[:d] += _scaled(x, mean, std).sum(0)
        sums[d:-1] += _targets(targets, position, len(x)).sum(0)
        sums[-1] += len(x)
    all_reduce_sum(sums)
    n = float(sums[-1])
    x_mean, y_mean = sums[:d] / n, sums[d:-1] / n
    gram = torch.zeros(d * d + d * t, dtype=torch.float64)  # Xc^T Xc and Xc^T yc, centred before summing
    for position, x in source.batches(reuse=True):
        xc = _scaled(x, mean, std).sub_(x_mean)
        gram[:d * d] += (xc.T @ xc).flatten()
        gram[d * d:] += (xc.T @ (_targets(targets, position, len(x)) - y_mean)).flatten()
    all_reduce_sum(gram)
    lam, v = torch.linalg.eigh(gram[:d * d].view(d, d))
    keep = lam > lam.max() * 1e-12
    lam, v = lam[keep], v[:, keep]
    s = lam.sqrt()
    uty = (v.T @ gram[d * d:].view(d, t)) / s[:, None]  # u^T yc, where u = xc v / s
    a = torch.as_tensor(alphas, dtype=torch.float64)[:, None]
    shrink = lam / (lam + a)  # [alphas, k]
    squared = torch.zeros(len(alphas), dtype=torch.float64)
    for position, x in source.batches(reuse=True):
        u = (_scaled(x, mean, std).sub_(x_mean) @ v) / s
        fitted = torch.einsum("nk,ak,kt->ant", u, shrink, uty) + y_mean
        hat_diag = (u**2) @ shrink.T + 1.0 / n  # [rows, alphas]
        loo = (_targets(targets, position, len(x))[None] - fitted) / (1.0 - hat_diag.T)[:, :, None]
        squared += (loo**2).sum((1, 2))
    all_reduce_sum(squared)
    weights = torch.einsum("dk,ak,kt->adt", v, s / (lam + a), uty)
    intercepts = y_mean - torch.einsum("d,adt->at", x_mean, weights)
    return weights, intercepts, squared / (n * t)


def fit_streamed_ridge(head: nn.Sequential, source: ShardRows, targets: np.ndarray) -> dict:
    """probe_heads.fit_ridge on the streamed rows: `head` fitted, and what was chosen (the same record)."""
    raw_mean, raw_std, _ = feature_statistics(source)
    scalings = {"standardized": (raw_mean, raw_std),
                "as given": (torch.zeros_like(raw_mean), torch.ones_like(raw_std))}
    paths = {name: streamed_ridge_path(source, targets, *scaling, ALPHA_GRID) for name, scaling in scalings.items()}
    scaling = min(paths, key=lambda name: float(paths[name][2].min()))
    weights, intercepts, errors = paths[scaling]
    best = int(torch.argmin(errors))
    with torch.no_grad():
        head[0].mean.copy_(scalings[scaling][0])
        head[0].std.copy_(scalings[scaling][1])
    _copy(head, weights[best].T, intercepts[best])
    return {"scaling": scaling, "alpha": ALPHA_GRID[best], "cv_mse": round(float(errors[best]), 5),
            "cv_candidates": {f"{a:g}": round(float(e), 5) for a, e in zip(ALPHA_GRID, errors)},
            "cv_mse_by_scaling": {name: round(float(path[2].min()), 5) for name, path in paths.items()}}


@torch.no_grad()
def streamed_mse(head: nn.Sequential, source: ShardRows, targets: np.ndarray) -> dict:
    """Mean squared error of `head` on every process's rows (as mse_loss on the whole matrix), a batch at a time."""
    sums = torch.zeros(2, dtype=torch.float64)
    head.eval()
    for position, x in source.batches(reuse=True):
        out = head[2](torch.from_numpy(x).sub_(head[0].mean).div_(head[0].std))
        y = _targets(targets, position, len(x)).float()
        sums += torch.tensor([float(((out - y) ** 2).double().sum()), out.numel()], dtype=torch.float64)
    all_reduce_sum(sums)
    return {"loss": float(sums[0]) / max(float(sums[1]), 1.0), "rows": int(sums[1]) // max(1, head[2].out_features)}


def streamed_ridge_stage(head: nn.Sequential, stage_name: str, train: tuple[ShardRows, np.ndarray],
                         val: tuple[ShardRows, np.ndarray], on_epoch=None) -> list[dict]:
    """probe_heads.solved_stage's regression record, on streamed rows."""
    started = time.perf_counter()
    chosen = fit_streamed_ridge(head, *train)
    seconds = round(time.perf_counter() - started, 3)
    held = streamed_mse(head, *val)
    record = {"stage": stage_name, "epoch": 1, "train_loss": streamed_mse(head, *train)["loss"],
              "val_loss": held["loss"] if held["rows"] else 0.0, "seconds": seconds,
              "solver": "ridge regression (streamed, leave-one-out alpha)", "probe": chosen}
    for p in head.parameters():
        p.requires_grad_(False)
    if on_epoch is not None:
        on_epoch(record)
    return [record]


def refit_streamed_ridge(head: nn.Sequential, source: ShardRows, targets: np.ndarray) -> dict:
    """probe_heads.refit_head's regression refit on streamed rows: the scaling and alpha chosen again on every
    labeled row, as the in-memory refit does."""
    started = time.perf_counter()
    chosen = fit_streamed_ridge(head, source, targets)
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    rows = int(all_reduce_sum(torch.tensor([float(len(targets))], dtype=torch.float64))[0])
    return {"rows": rows, "scaling": chosen["scaling"], "alpha": chosen["alpha"],
            "seconds": round(time.perf_counter() - started, 3)}
