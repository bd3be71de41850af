"""Regression and multi-label heads on frozen features, solved instead of trained (probe.py does classification).

A `linear` head trained by AdamW on a few hundred rows overfits or underfits depending on `head_epochs` and the
learning rate; the convex problem it approximates has a closed form (ridge) or a cheap exact solve (logistic
regression), with the regularisation chosen by cross-validation. Measured by a user on a text regression set:
RidgeCV on frozen MiniLM features test R^2 0.428, headstart's gradient-trained head 0.323. Measured here once, by a
one-off script (bench/suite.py's regression task is to reproduce it at a known commit; until then, indicative)
(TextRegressor, `features`, Women's Clothing reviews' rating 1-5, 2,000 random test reviews): 500 training reviews,
subsets 0-2, ridge 0.285 / 0.231 / 0.271 where the gradient head scored 0.204 / 0.146 / 0.088; 2,000 reviews
0.360 vs 0.326. scikit-learn's RidgeCV on all the rows scored 0.287 / 0.257 / 0.272 and 0.359.

- Regression: ridge on the head's standardised features and the estimator's standardised targets, the penalty
  chosen from ALPHA_GRID by exact leave-one-out error (one eigendecomposition serves every alpha, as
  scikit-learn's RidgeCV does with gcv; its predictions and choice are the reference in the tests).
- Multi-label: one logistic regression per label (one-vs-rest, scikit-learn's objective), every label and fold
  solved together in one L-BFGS; each label's C and one input scaling chosen by cross-validated log loss.
  Per-label decision thresholds are chosen where they raise micro-F1 over 0.5 (thresholds.choose_thresholds): out
  of fold on every labeled row when the head is refitted on them, else on the validation rows.

Either result is copied into the torch `linear` head, which predicts, exports, saves and fine-tunes as before.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .heads import HeadConfig, Standardize, build_head
from .probe import C_GRID, DEFAULT_C, MAX_ITER, SEARCH_MAX_ITER, _scale, lbfgs_folds, probe_stage, refit_probe
from .thresholds import choose_thresholds, micro_f1

# Standardised features: X^T X has trace rows x features, so useful penalties span small (many rows, few
# features) to very large (a few hundred rows of 1,280 correlated features); half-decade steps.
ALPHA_GRID = tuple(float(a) for a in np.logspace(-1, 5, 13))
SOLVERS = {"classification": "logistic regression", "regression": "ridge regression",
           "multilabel": "one-vs-rest logistic regression"}



# --- regression: ridge with leave-one-out alpha --------------------------------------------------------------
def ridge_path(x: torch.Tensor, y: torch.Tensor, alphas: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
    """Ridge with an unpenalised intercept at every alpha, from one eigendecomposition of the centred data.
    Returns (weights [alphas, features, targets], intercepts [alphas, targets], leave-one-out mean squared
    errors [alphas]). The hat matrix is H = Xc (Xc^T Xc + alpha I)^-1 Xc^T + 11^T / n; a row's leave-one-out
    residual is its residual / (1 - H_ii), exactly (scikit-learn's _RidgeGCV)."""
    x, y = x.double(), y.double().reshape(len(y), -1)
    n, d = x.shape
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    # eigenvectors of the smaller Gram matrix: features x features when rows outnumber them, else rows x rows
    if n > d:
        lam, v = torch.linalg.eigh(xc.T @ xc)
        keep = lam > lam.max() * 1e-12
        lam, v = lam[keep], v[:, keep]
        u = (xc @ v) / lam.sqrt()  # left singular vectors
    else:
        lam, u = torch.linalg.eigh(xc @ xc.T)
        keep = lam > lam.max() * 1e-12
        lam, u = lam[keep], u[:, keep]
        v = (xc.T @ u) / lam.sqrt()  # right singular vectors
    s = lam.sqrt()
    uty = u.T @ yc  # [k, targets]
    a = torch.as_tensor(alphas, dtype=torch.float64)[:, None]  # [alphas, 1]
    shrink = lam / (lam + a)  # [alphas, k]: each direction's fraction kept
    fitted = torch.einsum("nk,ak,kt->ant", u, shrink, uty) + y_mean  # [alphas, rows, targets]
    hat_diag = (u**2) @ shrink.T + 1.0 / n  # [rows, alphas]
    loo = (y[None] - fitted) / (1.0 - hat_diag.T)[:, :, None]
    weights = torch.einsum("dk,ak,kt->adt", v, s / (lam + a), uty)
    intercepts = y_mean - torch.einsum("d,adt->at", x_mean, weights)
    return weights, intercepts, (loo**2).mean((1, 2))


def fit_ridge(head: nn.Sequential, features: torch.Tensor, targets: torch.Tensor) -> dict:
    """Fit `head` (probe.is_probe_head, one output) as ridge, the input scaling (standardised, or as the backbone
    gives it) and alpha chosen together by leave-one-out error; returns what was chosen and every alpha's error
    at the chosen scaling. Both scalings, as for classification: on 80 clothing reviews (MiniLM-L6) the
    standardised features' error fell all the way to the top of the grid (a constant prediction, test R^2 -0.03)
    where the unit-norm embeddings as given chose alpha 3.2 (suite smoke run, bench/suite_tasks.py)."""
    if len(targets) < 3:  # leave-one-out needs rows to leave out; the middle of the grid, untested
        alpha = ALPHA_GRID[len(ALPHA_GRID) // 2]
        weights, intercepts, _ = ridge_path(_scale(head[0], features, "standardized"), targets, (alpha,))
        _copy(head, weights[0].T, intercepts[0])
        return {"scaling": "standardized", "alpha": alpha, "cv_mse": None, "cv_candidates": None}
    paths = {name: ridge_path(_scale(head[0], features, name), targets, ALPHA_GRID)
             for name in ("standardized", "as given")}
    scaling = min(paths, key=lambda name: float(paths[name][2].min()))
    weights, intercepts, errors = paths[scaling]
    best = int(torch.argmin(errors))
    _scale(head[0], features, scaling)  # the head computes what the chosen solve saw
    _copy(head, weights[best].T, intercepts[best])
    return {"scaling": scaling, "alpha": ALPHA_GRID[best], "cv_mse": round(float(errors[best]), 5),
            "cv_candidates": {f"{a:g}": round(float(e), 5) for a, e in zip(ALPHA_GRID, errors)},
            "cv_mse_by_scaling": {name: round(float(path[2].min()), 5) for name, path in paths.items()}}


def _copy(head: nn.Sequential, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        linear = head[2]
        linear.weight.copy_(weight.to(linear.weight.dtype))
        linear.bias.copy_(bias.to(linear.bias.dtype))


# --- multi-label: one-vs-rest logistic regression ------------------------------------------------------------
def _solve_ovr_folds(x: torch.Tensor, y: torch.Tensor, fit_masks: torch.Tensor, c_value: float | torch.Tensor,
                     start: tuple[torch.Tensor, torch.Tensor] | None = None,
                     max_iter: int = MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """One binary logistic regression per label and per row of `fit_masks` [folds, rows], each with
    scikit-learn's objective (divided by C * its rows), solved together by L-BFGS as probe._solve_folds does:
    the objectives are independent, so the sum's minimum is each one's. `y`: 0/1 [rows, labels]. Returns
    weights [folds, labels, features] and biases [folds, labels]."""
    targets = y.to(x.dtype)[:, None, :].expand(-1, len(fit_masks), -1)

    def log_loss(logits: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:
        per_label = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (per_label * row_weights[:, :, None]).sum()

    return lbfgs_folds(x, fit_masks, y.shape[1], c_value, log_loss, start, max_iter)


def _ovr_folds(n: int, seed: int) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Up to 3 shuffled folds (labels overlap, so no stratification): fit-row masks and held-out rows."""
    from sklearn.model_selection import KFold

    held = [rows for _, rows in KFold(min(3, n), shuffle=True, random_state=seed).split(np.zeros(n))]
    masks = torch.ones(len(held), n, dtype=torch.bool)
    for f, rows in enumerate(held):
        masks[f, torch.as_tensor(rows)] = False
    return masks, held


def _ovr_search(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[list[float], float, dict]:
    """(each label's best C, the mean held-out log loss per row and label at those Cs, every C's mean over labels)
    over probe.C_GRID, walked from strong to weak, each solve starting from the previous C's. Every label gets
    the C of its own lowest held-out loss, as scikit-learn's OneVsRestClassifier(LogisticRegressionCV()) does."""
    masks, held = _ovr_folds(len(y), seed)
    losses = np.zeros((len(held), len(C_GRID), y.shape[1]))
    solved = None
    for j, c_value in enumerate(C_GRID):
        solved = _solve_ovr_folds(x, y, masks, c_value, solved, SEARCH_MAX_ITER)
        for f, rows in enumerate(held):
            rows = torch.as_tensor(rows)
            logits = x[rows] @ solved[0][f].T + solved[1][f]
            per_label = nn.functional.binary_cross_entropy_with_logits(logits, y[rows].to(x.dtype), reduction="none")
            losses[f, j] = per_label.mean(0).numpy()
    mean = losses.mean(0)  # [C, labels]
    best = mean.argmin(0)
    return ([float(C_GRID[b]) for b in best], float(mean.min(0).mean()),
            {f"{c:g}": round(float(m), 4) for c, m in zip(C_GRID, mean.mean(1))})


def fit_ovr(head: nn.Sequential, features: torch.Tensor, targets: torch.Tensor, seed: int = 0) -> dict:
    """Fit `head` as one-vs-rest logistic regression; each label's C and the scaling (standardised or as the
    backbone gives the features, as probe.fit_probe chooses, one for all labels since the head standardises
    once) by 3-fold cross-validated log loss."""
    y = targets.float()
    if len(y) < 4:  # too few rows to hold any out
        searched = {"standardized": ([DEFAULT_C] * y.shape[1], None, None)}
    else:
        searched = {name: _ovr_search(_scale(head[0], features, name), y, seed)
                    for name in ("standardized", "as given")}
    scaling = min(searched, key=lambda name: searched[name][1] or 0.0)
    c_values, cv_loss, _ = searched[scaling]
    _install_ovr(head, features, y, scaling, c_values)
    return {"scaling": scaling, "C": c_values, "cv_log_loss": None if cv_loss is None else round(cv_loss, 4),
            "cv_candidates": {name: grid for name, (_, _, grid) in searched.items()}}


def _install_ovr(head: nn.Sequential, features: torch.Tensor, targets: torch.Tensor, scaling: str,
                 c_values: list[float]) -> None:
    x = _scale(head[0], features, scaling)
    weight, bias = _solve_ovr_folds(x, targets.float(), torch.ones(1, len(targets), dtype=torch.bool),
                                    torch.tensor(c_values))
    _copy(head, weight[0], bias[0])


def cross_validated_micro_f1(features: torch.Tensor, targets: torch.Tensor, seed: int = 0) -> float:
    """Out-of-fold micro-F1 (at 0.5) of the one-vs-rest head at the scaling and C that fit_ovr chooses on these
    rows: what `auto` measures of multi-label features (advisor.head_task_advice)."""
    y = targets.float()
    if len(y) < 4:
        return float("nan")
    head = build_head(HeadConfig(), features.shape[1], y.shape[1])
    chosen = fit_ovr(head, features, y, seed)
    x = _scale(head[0], features, chosen["scaling"])
    masks, held = _ovr_folds(len(y), seed)
    weight, bias = _solve_ovr_folds(x, y, masks, torch.tensor(chosen["C"]))
    decided = np.zeros(tuple(y.shape), dtype=bool)
    for f, rows in enumerate(held):
        decided[rows] = (x[torch.as_tensor(rows)] @ weight[f].T + bias[f] >= 0).numpy()  # sigmoid >= 0.5
    return micro_f1(y.numpy() >= 0.5, decided)


# --- the head stage and the final refit, for every task ------------------------------------------------------
def solved_stage(task: str, head: nn.Sequential, stage_name: str, train_loader, val_loader, n_outputs: int,
                 seed: int, on_epoch=None) -> list[dict]:
    """A head stage on cached features, solved for `task`: one history record, like train.run_stage's."""
    if task == "classification":
        return probe_stage(head, stage_name, train_loader, val_loader, n_outputs, seed, on_epoch)
    started = time.perf_counter()
    _, x_train, y_train = train_loader.dataset.tensors
    _, x_val, y_val = val_loader.dataset.tensors
    chosen = fit_ridge(head, x_train, y_train) if task == "regression" else fit_ovr(head, x_train, y_train, seed)
    seconds = round(time.perf_counter() - started, 3)
    head.eval()
    loss_fn = nn.functional.mse_loss if task == "regression" else nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        record = {"stage": stage_name, "epoch": 1, "train_loss": float(loss_fn(head(x_train.float()), y_train.float())),
                  "val_loss": 0.0}
        if len(y_val):
            out = head(x_val.float())
            record["val_loss"] = float(loss_fn(out, y_val.float()))
            if task == "multilabel":
                chosen.update(choose_thresholds(y_val.numpy(), out.sigmoid().numpy()))
    solver = "ridge regression (closed form, leave-one-out alpha)" if task == "regression" else \
        "one-vs-rest logistic regression (L-BFGS)"
    record.update({"seconds": seconds, "solver": solver, "probe": chosen})
    for p in head.parameters():
        p.requires_grad_(False)
    if on_epoch is not None:
        on_epoch(record)
    return [record]


def refit_head(task: str, head: nn.Sequential, parts: list[tuple[torch.Tensor, torch.Tensor]], n_outputs: int,
               chosen: dict) -> dict:
    """Solve the head again on every labeled row (`parts`: training, validation) at the penalty and scaling
    cross-validation chose on the training rows (probe.refit_probe says why)."""
    if task == "classification":
        return refit_probe(head, parts, n_outputs, chosen)
    started = time.perf_counter()
    x = torch.cat([f for f, _ in parts])
    y = torch.cat([t for _, t in parts])
    if task == "regression":
        # leave-one-out costs one eigendecomposition, so the scaling and alpha are chosen again on every row, as
        # scikit-learn's RidgeCV does on what it is given. Measured (bench/suite_tasks.py, clothing reviews' rating,
        # 100 reviews): on the 80 training rows the error was lowest at the top of the grid (no signal), on all
        # 100 at alpha 1, where RidgeCV also lands.
        chosen = fit_ridge(head, x, y)
        penalty = {"alpha": chosen["alpha"]}
    else:
        penalty = {"C": chosen["C"], "thresholds": out_of_fold_thresholds(x, y, chosen)}
        _install_ovr(head, x, y, chosen["scaling"], chosen["C"])
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return {"rows": len(y), "scaling": chosen["scaling"], **penalty, "seconds": round(time.perf_counter() - started, 3)}


def out_of_fold_thresholds(features: torch.Tensor, targets: torch.Tensor, chosen: dict) -> dict:
    """choose_thresholds on every labeled row's out-of-fold probabilities (3 folds at the chosen scaling and Cs),
    not on the validation rows alone. Measured (clothing-review tags, MiniLM features, 1,000 test reviews): thresholds
    chosen on 20 validation rows cost 0.7 points of micro-F1 against 0.5 everywhere at 100 training rows (5 subsets)
    and 0.2 at 500 (3 subsets); chosen out of fold on all rows they gained 0.3 and 0.5, level with and 0.9 points
    above scikit-learn's OneVsRestClassifier(LogisticRegressionCV())."""
    y = targets.float()
    if len(y) < 4:
        return choose_thresholds(np.zeros((0, y.shape[1])), np.zeros((0, y.shape[1])))
    proba = cross_validated_predictions("multilabel", features, y, chosen, seed=0)
    return {**choose_thresholds(y.numpy(), proba), "rows_from": f"out of fold on {len(y)} labeled rows"}


def cross_validated_predictions(task: str, features: torch.Tensor, targets: torch.Tensor, chosen: dict,
                                seed: int = 0) -> np.ndarray:
    """Every row's out-of-fold prediction (3 shuffled folds) at the scaling and penalty chosen on the training
    rows: ridge values on the targets as given (regression, [rows, 1]) or one-vs-rest probabilities (multi-label,
    [rows, labels]). What the race compares two solved heads on (race.py), and the thresholds are chosen on."""
    y = targets.float().reshape(len(targets), -1)
    x = _scale(Standardize(features.shape[1]), features, chosen["scaling"])
    masks, held = _ovr_folds(len(y), seed)
    out = np.zeros(tuple(y.shape))
    if task == "regression":
        for fit, rows in zip(masks, held):
            weights, intercepts, _ = ridge_path(x[fit], y[fit], (chosen["alpha"],))
            out[rows] = (x[torch.as_tensor(rows)].double() @ weights[0] + intercepts[0]).numpy()
        return out
    weight, bias = _solve_ovr_folds(x, y, masks, torch.tensor(chosen["C"]))
    for f, rows in enumerate(held):
        out[rows] = torch.sigmoid(x[torch.as_tensor(rows)] @ weight[f].T + bias[f]).numpy()
    return out
