"""The linear probe of a head stage, solved as logistic regression (scikit-learn's objective) instead of trained by SGD.

A head trained by AdamW on standardised features with light weight decay overfits a few hundred rows (training
loss 0.14 on 192 tweets), and the fine-tune that starts from it gets little gradient. Logistic regression with
its L2 strength chosen by cross-validation does better, measured here on 64 tweets per class (MiniLM-L6, 600
test tweets): torch head 0.620; L2-regularised logistic regression on the raw unit-norm embeddings 0.66-0.67;
on standardised ones at most 0.632. For Fashion-MNIST features the choice matters less (0.79-0.80 either way).
So both the input scaling (standardised or as the backbone gives it) and C are chosen by cross-validated log
loss, and the result is copied into the torch head, which then predicts, exports and fine-tunes like any other.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .data.labeled import stratified_subsample
from .heads import Standardize

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
MAX_ITER = 100  # L-BFGS iterations of a head's final solve
# ... and of each step of the C search, which only compares log losses and starts each C from the previous
# solution. Measured on Lite0 features of Fashion-MNIST (3 subsets each of 100 and 1,000 rows): the same C and
# scaling chosen at 40 as at 100 every time, log losses within 0.004, the search 2.3x faster at 1,000 rows.
SEARCH_MAX_ITER = 40
TOLERANCE_GRAD = 1e-6  # L-BFGS stops once no component of the (mean) objective's gradient exceeds this
MAX_SELECT_ROWS = 2000  # the grid search runs on a stratified subsample; the final fit uses every row
DEFAULT_C = 1.0  # scikit-learn's default, for when there are too few rows to cross-validate
# fixed_c_predictions (the advisor's probe) stops where scikit-learn's LogisticRegression does: at most 300
# iterations, or no gradient component of the mean objective above its tol (1e-4)
FIXED_C_MAX_ITER, FIXED_C_TOLERANCE = 300, 1e-4


def is_probe_head(head: nn.Module) -> bool:
    """A head this module can solve: Standardize -> Dropout -> Linear (the `linear` head)."""
    return (isinstance(head, nn.Sequential) and len(head) == 3 and isinstance(head[0], Standardize)
            and isinstance(head[2], nn.Linear))


def _smallest_class(y: torch.Tensor) -> int:
    """Rows in the smallest class present."""
    return int(torch.unique(y, return_counts=True)[1].min())


def _solve(x: torch.Tensor, y: torch.Tensor, n_classes: int, c_value: float, max_iter: int = MAX_ITER,
           tolerance_grad: float = TOLERANCE_GRAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with scikit-learn's objective (C * summed log loss + |W|^2 / 2, here
    divided by C * n) on every row of `x`: returns (weight [classes, features], bias [classes])."""
    weight, bias = _solve_folds(x, y, torch.ones(1, len(y), dtype=torch.bool), n_classes, c_value,
                                max_iter=max_iter, tolerance_grad=tolerance_grad)
    return weight[0], bias[0]


def _solve_folds(x: torch.Tensor, y: torch.Tensor, fit_masks: torch.Tensor, n_classes: int, c_value: float,
                 start: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = MAX_ITER,
                 tolerance_grad: float = TOLERANCE_GRAD) -> tuple[torch.Tensor, torch.Tensor]:
    """One logistic regression per row of `fit_masks` [folds, rows] (each on its masked rows of `x`), solved
    together, full-batch, by torch's L-BFGS: their objectives are independent, so the sum's minimum is each
    one's, and the folds of one search are alike enough to share a step. Returns weights [folds, classes,
    features] and biases [folds, classes]. Measured on this 2-core CPU, the whole probe (search, both scalings,
    and the final solve) on 1,000 x 1,280 Lite0 features: 5.0 s a fold at a time at 100 iterations, 1.8 s folds
    together with the search at SEARCH_MAX_ITER; 80 rows: 1.6 -> 0.9 s (there Python's per-iteration overhead is
    most of it); 3,072 x 384 MiniLM features: 1.4 -> 0.6 s; same choices and test accuracies. scikit-learn's own
    lbfgs took 30 s for the grid at 1,000 x 1,280 (18 ms an iteration, up to 600 iterations on raw features)."""
    targets = y[:, None, None].expand(-1, len(fit_masks), 1)

    def log_loss(logits: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:
        return -(torch.log_softmax(logits, -1).gather(-1, targets)[..., 0] * row_weights).sum()

    return lbfgs_folds(x, fit_masks, n_classes, c_value, log_loss, start, max_iter, tolerance_grad)


def lbfgs_folds(x: torch.Tensor, fit_masks: torch.Tensor, n_outputs: int, c_value: float | torch.Tensor, data_loss,
                start: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = MAX_ITER,
                tolerance_grad: float = TOLERANCE_GRAD) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-BFGS solve shared by the softmax probe (_solve_folds) and the one-vs-rest one (probe_heads): weights
    [folds, outputs, features] and biases [folds, outputs] minimising `data_loss(logits [rows, folds, outputs],
    row_weights [rows, folds])` (each fold's mean over its rows) plus scikit-learn's L2 term divided by C * rows.
    `c_value`: one C, or one per output ([outputs]: independent one-vs-rest problems, each at its own C).
    `tolerance_grad`: it stops once no gradient component exceeds this."""
    folds = len(fit_masks)
    if start is None:
        weight = torch.zeros(folds, n_outputs, x.shape[1], dtype=x.dtype)
        bias = torch.zeros(folds, n_outputs, dtype=x.dtype)
    else:
        weight, bias = start[0].clone(), start[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    fit_counts = fit_masks.sum(1, keepdim=True).to(x.dtype)
    row_weights = (fit_masks.to(x.dtype) / fit_counts).T  # [rows, folds]: each fold's loss is a mean over its rows
    c_per_output = torch.as_tensor(c_value, dtype=x.dtype).reshape(1, -1)  # [1, 1] or [1, outputs]
    penalty = (1.0 / (2.0 * c_per_output * fit_counts))[:, :, None]  # [folds, 1 or outputs, 1]
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=tolerance_grad,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        # every row through every fold's weights in one product; a fold's held-out rows get weight 0
        logits = (x @ weight.reshape(-1, x.shape[1]).T).view(len(x), folds, n_outputs) + bias
        loss = data_loss(logits, row_weights) + (penalty * weight**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


def _folds(y: torch.Tensor, seed: int) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Stratified folds (3, fewer when the smallest class has fewer rows): their fit-row masks [folds, rows] and
    their held-out row indices (a fold fits on every row it does not hold out)."""
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(max(2, min(3, _smallest_class(y))), shuffle=True, random_state=seed)
    held = [rows for _, rows in folds.split(np.zeros(len(y)), y.numpy())]
    masks = torch.ones(len(held), len(y), dtype=torch.bool)
    for f, rows in enumerate(held):
        masks[f, torch.as_tensor(rows)] = False
    return masks, held


def _standard_deviation(x: torch.Tensor) -> torch.Tensor:
    """Per-feature standard deviation as scikit-learn's StandardScaler takes it: over the rows (not unbiased), and
    1 where the feature is constant (its variance within rounding of zero, by StandardScaler's own test)."""
    mean, var, n = x.mean(0), x.var(0, unbiased=False), len(x)
    eps = torch.finfo(torch.float64).eps
    return torch.where(var <= n * eps * var + (n * mean * eps) ** 2, torch.ones_like(var), var.sqrt())


def fixed_c_predictions(features: np.ndarray, labels: np.ndarray, held: list[np.ndarray], c_value: float,
                        max_iter: int = FIXED_C_MAX_ITER) -> np.ndarray:
    """Out-of-fold labels of logistic regression at a fixed `c_value` on standardised features, each fold fitted on
    every row it does not hold out (`held`: each fold's held-out rows), by this module's solver: what
    scikit-learn's cross_val_predict of make_pipeline(StandardScaler(), LogisticRegression(C=c_value)) gives. Each
    fold is standardised by its own fitting rows, as the pipeline's scaler is, so each fold is its own solve. Two
    classes: scikit-learn solves one weight vector; the softmax pair at C / 2 is that model (half of the pair's
    difference in each, so the same penalty)."""
    classes, codes = np.unique(labels, return_inverse=True)
    features = np.asarray(features)
    dtype = torch.float64 if features.dtype == np.float64 else torch.float32  # scikit-learn keeps float32 too
    x = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(codes, dtype=torch.long)
    c_value = c_value / 2 if len(classes) == 2 else c_value
    predicted = np.zeros(len(y), dtype=np.int64)
    threads = torch.get_num_threads()
    # One thread, as rank.cv_accuracy limits BLAS: 1,000 x 1,280 Lite0 features took 0.35 s; with two threads on
    # this 2-core CPU while a benchmark ran, 13-15 s
    torch.set_num_threads(1)
    try:
        for rows in held:
            fit = np.ones(len(y), dtype=bool)
            fit[rows] = False
            mean, std = x[fit].mean(0), _standard_deviation(x[fit])
            weight, bias = _solve(((x[fit] - mean) / std).to(dtype), y[fit], len(classes), c_value, max_iter,
                                  FIXED_C_TOLERANCE)
            predicted[rows] = (((x[rows] - mean) / std).to(dtype) @ weight.T + bias).argmax(-1).numpy()
    finally:
        torch.set_num_threads(threads)
    return classes[predicted]


def _cv_search(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int) -> tuple[float, float]:
    """(best C, its mean cross-validated log loss) over C_GRID; the folds walk the grid from strong to weak
    together, each solve starting from the previous C's solution."""
    masks, held = _folds(y, seed)
    losses = np.zeros((len(held), len(C_GRID)))
    solved = None
    for j, c_value in enumerate(C_GRID):
        solved = _solve_folds(x, y, masks, n_classes, c_value, solved, SEARCH_MAX_ITER)
        for f, rows in enumerate(held):
            rows = torch.as_tensor(rows)
            logits = x[rows] @ solved[0][f].T + solved[1][f]
            losses[f, j] = float(nn.functional.cross_entropy(logits, y[rows]))
    mean = losses.mean(0)
    best = int(np.argmin(mean))
    return float(C_GRID[best]), float(mean[best])


def choose_scaling(scaled: dict[str, torch.Tensor], y: torch.Tensor, n_classes: int, seed: int,
                   foldable: bool | None = None) -> dict:
    """The input scaling ("standardized" or "as given": `scaled` holds the same rows each way) and C, by
    cross-validated log loss on those rows; what fit_probe reports. Not `foldable` (a class of one row, in `y`
    unless told): no folds to hold out, so the defaults."""
    if not (_smallest_class(y) >= 2 if foldable is None else foldable):
        searched = {"standardized": (DEFAULT_C, None)}
    else:
        searched = {name: _cv_search(x, y, n_classes, seed) for name, x in scaled.items()}
    scaling = min(searched, key=lambda name: searched[name][1] or 0.0)
    c_value, cv_loss = searched[scaling]
    return {"scaling": scaling, "C": c_value, "cv_log_loss": _rounded(cv_loss),
            "cv_candidates": {name: {"C": c, "cv_log_loss": _rounded(loss)} for name, (c, loss) in searched.items()}}


def fit_probe(head: nn.Sequential, features: torch.Tensor, targets: torch.Tensor, n_classes: int,
              seed: int = 0) -> dict:
    """Fit `head` (see is_probe_head) as logistic regression on `features`; returns what was chosen and why."""
    standardize = head[0]
    standardize.set_statistics(features)
    x_all, y_all = features.float(), targets.long()
    scaled = {"standardized": (x_all - standardize.mean) / standardize.std, "as given": x_all}
    rows = torch.as_tensor(stratified_subsample(len(y_all), y_all.numpy(), seed, MAX_SELECT_ROWS))
    chosen = choose_scaling({name: x[rows] for name, x in scaled.items()}, y_all[rows], n_classes, seed,
                            foldable=_smallest_class(y_all) >= 2)
    _install(head, features, y_all, n_classes, chosen["scaling"], chosen["C"])
    return chosen


def _scale(standardize: Standardize, features: torch.Tensor, scaling: str) -> torch.Tensor:
    """Set `standardize` for `scaling` (the features' own statistics, or the identity for "as given") and return
    the features through it: what the solver sees is what the head will compute."""
    with torch.no_grad():
        if scaling == "as given":
            standardize.mean.zero_()
            standardize.std.fill_(1.0)
        else:
            standardize.set_statistics(features)
    return (features.float() - standardize.mean) / standardize.std


def _install(head: nn.Sequential, features: torch.Tensor, targets: torch.Tensor, n_classes: int, scaling: str,
             c_value: float) -> None:
    """Solve at `c_value` on `features` scaled as `scaling` says, and copy the result into the torch head."""
    weight, bias = _solve(_scale(head[0], features, scaling), targets.long(), n_classes, c_value)
    with torch.no_grad():
        linear = head[2]
        linear.weight.copy_(weight.to(linear.weight.dtype))
        linear.bias.copy_(bias.to(linear.bias.dtype))


def refit_probe(head: nn.Sequential, parts: list[tuple[torch.Tensor, torch.Tensor]], n_classes: int,
                chosen: dict) -> dict:
    """Solve the head again on every labeled row (training + validation: `parts`), at the scaling and C that
    cross-validation chose on the training rows, as scikit-learn's LogisticRegressionCV refits. The hold-out
    has done its work (it scored the fit and gated the fine-tune); left out of the final head, it is a fifth of
    the labels wasted. Measured (`features`, test accuracy, 3 subsets or seeds each, without -> with): Fashion-MNIST
    @64 px 10 / 30 / 100 per class 0.701 / 0.754 / 0.796 -> 0.703 / 0.760 / 0.799; tweets at 64 per class 0.627
    (0.619 over 5 seeds without). It lost on some single subsets (Fashion-MNIST subset 0: 0.724 -> 0.706 at 10)."""
    started = time.perf_counter()
    x = torch.cat([f for f, _ in parts])
    y = torch.cat([t for _, t in parts])
    _install(head, x, y, n_classes, chosen["scaling"], chosen["C"])
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return {"rows": len(y), "scaling": chosen["scaling"], "C": chosen["C"],
            "seconds": round(time.perf_counter() - started, 3)}


def _rounded(loss: float | None) -> float | None:
    return None if loss is None else round(loss, 4)


def probe_stage(head: nn.Sequential, stage_name: str, train_loader, val_loader, n_classes: int, seed: int,
                on_epoch=None) -> list[dict]:
    """A head stage on cached features, solved as logistic regression: one history record, like run_stage's."""
    started = time.perf_counter()
    _, x_train, y_train = train_loader.dataset.tensors
    chosen = fit_probe(head, x_train, y_train, n_classes, seed)
    seconds = round(time.perf_counter() - started, 3)
    head.eval()
    _, x_val, y_val = val_loader.dataset.tensors
    with torch.no_grad():
        train_loss = float(nn.functional.cross_entropy(head(x_train.float()), y_train.long()))
        record = {"stage": stage_name, "epoch": 1, "train_loss": train_loss, "val_loss": 0.0, "val_accuracy": 0.0}
        if len(y_val):
            logits = head(x_val.float())
            record["val_loss"] = float(nn.functional.cross_entropy(logits, y_val.long()))
            record["val_accuracy"] = float((logits.argmax(-1) == y_val).float().mean())
    record.update({"seconds": seconds, "solver": "logistic regression (L-BFGS)", "probe": chosen})
    for p in head.parameters():
        p.requires_grad_(False)
    if on_epoch is not None:
        on_epoch(record)
    return [record]


def cross_validated_proba(features: torch.Tensor, targets: torch.Tensor, n_classes: int, chosen: dict,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of every row at the chosen scaling and C (up to 3 folds), and a mask of the rows
    scored: the validation numbers of a fit that kept no hold-out. None are scored if a class has a single row."""
    y = targets.long()
    if len(y) == 0 or _smallest_class(y) < 2:
        return np.zeros((0, n_classes)), np.zeros(len(y), dtype=bool)
    x = _scale(Standardize(features.shape[1]), features, chosen["scaling"])
    proba = np.zeros((len(y), n_classes))
    masks, held = _folds(y, seed)
    weight, bias = _solve_folds(x, y, masks, n_classes, chosen["C"])
    for f, rows in enumerate(held):
        proba[rows] = torch.softmax(x[rows] @ weight[f].T + bias[f], -1).numpy()
    return proba, np.ones(len(y), dtype=bool)  # the folds cover every row
