"""The logistic-regression head on more feature rows than memory holds: rows streamed from the cache's shards.

Same problem as probe.py, only the final solve changes: scikit-learn's objective (mean log loss + |W|^2 / (2 C n)),
the head's Standardize statistics (summed over the stream instead of taken on one matrix), and the input scaling
and C chosen by probe's cross-validation on a stratified in-memory subsample of MAX_SELECT_ROWS rows, as
fit_probe already chooses them. The final solve is full-batch L-BFGS where every evaluation of the objective is
one pass over the rows in batches (cache.ShardRows), started from the subsample's solution: it converges to the
same minimum as the in-memory solver, deterministically, where SGD would reach it only up to its step-size noise.

Several processes (torchrun / accelerate launch): each holds only its own rows; a pass sums each process's loss
and gradient into one (`distributed.all_reduce_sum`), so every process takes the same L-BFGS step on the whole
objective. Only sums, counts and the selection subsample cross between processes.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .cache import ShardRows
from .data.labeled import stratified_subsample
from .distributed import all_reduce_sum, gather_small, num_processes
from .probe import MAX_ITER, MAX_SELECT_ROWS, _solve, choose_scaling, is_probe_head

# Below this many training rows the head stage keeps probe.py's in-memory solver (so every result measured so far
# is unchanged). By reading the code (not measured), that path holds about four float32 copies of the matrix at
# once (embed's array, the kept rows, the scaled copies of the search and the final solve); at 1,280 Lite0
# features 250,000 rows are 1.3 GB a copy, some 5 GB in all, the most a 16 GB machine can spare beside the
# backbone and the loader. The streamed solver holds a few copies of one batch (cache.BATCH_BYTES).
STREAM_MIN_ROWS = 250_000
# L-BFGS iterations of the streamed solve, as many as the in-memory solver's final solve (probe.MAX_ITER), each one
# or two passes over every row; it starts from the subsample's solution at the chosen C. Measured: bench/scale.py's
# 64-feature problem converged in 21-22 iterations (25-33 passes) at 10^5-10^7 rows; on 1,280 Lite0 features a cap
# of 30 was too few: 60,000 Fashion-MNIST photos (bench/scale.py --fashion) scored 0.860 streamed at 30 against
# 0.869 in memory, and on 1,000 (bench/stream_vs_memory.py) 2-4 of 1,000 test predictions differed.
STREAM_MAX_ITER = MAX_ITER
# The selection subsample is drawn stratified from this many rows drawn uniformly first: scikit-learn's stratified
# split sorts and permutes every row it is given, about 0.5 GB of transient index arrays at 10^7 rows (measured:
# peak RSS 2.1 GB at 10^7 rows before, see bench/scale.py). At or below it, the subsample is the in-memory solver's.
PRESAMPLE_ROWS = 200_000


def batch_targets(targets: np.ndarray, position: int, rows: int) -> torch.Tensor:
    """One batch's class numbers as int64: the caller's array may be narrower (2 bytes a row, where int64 for
    every row of 10^7 is 80 MB); int64 arrays are not copied."""
    return torch.as_tensor(targets[position:position + rows], dtype=torch.long)


def feature_statistics(source: ShardRows) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, std, rows) of every process's rows, as Standardize.set_statistics computes them on one matrix (its
    floor on the spread included), from float64 sums over the stream."""
    total = torch.zeros(2 * source.dim + 1, dtype=torch.float64)
    # one float64 buffer for every batch, as the batches share one (ShardRows.batches says why)
    wide = torch.empty((min(source.batch_rows(), len(source)), source.dim), dtype=torch.float64)
    for _, x in source.batches(reuse=True):
        xb = wide[: len(x)].copy_(torch.from_numpy(x))
        total[: source.dim] += xb.sum(0)
        total[source.dim: -1] += xb.square_().sum(0)  # in place: one float64 copy of the batch at a time
        total[-1] += len(x)
    all_reduce_sum(total)
    n = int(total[-1])
    mean = total[: source.dim] / max(n, 1)
    if n < 2:
        return mean.float(), torch.ones(source.dim), n
    var = ((total[source.dim: -1] - n * mean * mean) / (n - 1)).clamp(min=0.0)
    std = var.sqrt()
    std = std.clamp(min=max(float(std.median()) * 0.1, 1e-6))  # Standardize's floor, for the same reason
    return mean.float(), std.float(), n


def solve_streamed(source: ShardRows, targets: np.ndarray, n_classes: int, c_value: float, mean: torch.Tensor,
                   std: torch.Tensor, start: tuple[torch.Tensor, torch.Tensor],
                   max_iter: int = STREAM_MAX_ITER) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Multinomial logistic regression at `c_value` on every process's rows, scaled (x - mean) / std, by L-BFGS
    whose every evaluation is one pass: (weight [classes, features], bias [classes], how the solve went)."""
    n_total = int(all_reduce_sum(torch.tensor([float(len(targets))], dtype=torch.float64))[0])
    weight = start[0].clone().float().requires_grad_(True)
    bias = start[1].clone().float().requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-6,
                            line_search_fn="strong_wolfe")
    passes = [0]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        data_loss = 0.0
        for position, x in source.batches(reuse=True):  # each batch done with (backward taken) before the next
            # scaled in place: the batch is this pass's own copy, and two temporaries fewer bound the peak
            logits = torch.from_numpy(x).sub_(mean).div_(std) @ weight.T + bias
            loss = nn.functional.cross_entropy(logits, batch_targets(targets, position, len(x)),
                                               reduction="sum") / n_total
            loss.backward()
            data_loss += float(loss.detach())
        # one message a pass: this process's share of the loss and its gradient, summed over the processes
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in (weight, bias)]
        packed = torch.cat([grads[0].flatten(), grads[1], torch.tensor([data_loss])]).double()
        all_reduce_sum(packed)
        with torch.no_grad():
            weight.grad = packed[: weight.numel()].view_as(weight).float() + weight / (c_value * n_total)
            bias.grad = packed[weight.numel(): -1].float()
            penalty = float((weight.double() ** 2).sum()) / (2.0 * c_value * n_total)
        passes[0] += 1
        return torch.tensor(float(packed[-1]) + penalty)

    with torch.enable_grad():
        opt.step(closure)
        objective = float(closure())
    return weight.detach(), bias.detach(), {"iterations": int(opt.state[weight].get("n_iter", 0)),
                                           "passes": passes[0], "objective": round(objective, 6)}


def _subsample(source: ShardRows, targets: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stratified subsample of every process's rows, in memory on every process (each draws its share)."""
    share = max(1, MAX_SELECT_ROWS // num_processes())
    if len(targets) > PRESAMPLE_ROWS:  # see PRESAMPLE_ROWS (and no index of every row: 8 bytes a row)
        pool = np.sort(np.random.default_rng(seed).choice(len(targets), PRESAMPLE_ROWS, replace=False))
    else:
        pool = np.arange(len(targets))
    picked = pool[stratified_subsample(len(pool), targets[pool], seed, share)] if len(pool) else pool
    parts = gather_small((source.take(picked), targets[picked]))
    x = torch.as_tensor(np.concatenate([p[0] for p in parts]))
    y = torch.as_tensor(np.concatenate([p[1] for p in parts])).long()
    return x, y


def fit_streamed_probe(head: nn.Sequential, source: ShardRows, targets: np.ndarray, n_classes: int,
                       seed: int = 0) -> dict:
    """Fit `head` (probe.is_probe_head) on the streamed rows, as probe.fit_probe does on a matrix: the scaling and
    C chosen on a subsample, the final solve on every row of every process. Returns what was chosen and why."""
    mean, std, n_rows = feature_statistics(source)
    x_sub, y_sub = _subsample(source, np.asarray(targets), seed)
    scaled = {"standardized": (x_sub - mean) / std, "as given": x_sub}
    chosen = choose_scaling(scaled, y_sub, n_classes, seed)
    scaling, c_value = chosen["scaling"], chosen["C"]
    if scaling == "as given":
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    start = _solve(scaled[scaling], y_sub, n_classes, c_value)  # the subsample's optimum: where the solve begins
    weight, bias, solve = solve_streamed(source, targets, n_classes, c_value, mean, std, start)
    with torch.no_grad():
        head[0].mean.copy_(mean)
        head[0].std.copy_(std)
        head[2].weight.copy_(weight.to(head[2].weight.dtype))
        head[2].bias.copy_(bias.to(head[2].bias.dtype))
    return {**chosen, "streamed": {"rows": n_rows, "selection_rows": len(y_sub), **solve}}


@torch.no_grad()
def streamed_scores(head: nn.Module, source: ShardRows, targets: np.ndarray) -> dict:
    """Mean log loss and accuracy of `head` on every process's rows, a batch at a time."""
    sums = torch.zeros(3, dtype=torch.float64)  # summed log loss, correct, rows
    head.eval()
    probe_head = is_probe_head(head)
    for position, x in source.batches(reuse=True):
        if probe_head:  # Standardize's (x - mean) / std in place on the batch's buffer, not in two new arrays
            logits = head[2](torch.from_numpy(x).sub_(head[0].mean).div_(head[0].std))
        else:
            logits = head(torch.from_numpy(x))
        y = batch_targets(targets, position, len(x))
        sums += torch.tensor([float(nn.functional.cross_entropy(logits, y, reduction="sum")),
                              float((logits.argmax(-1) == y).sum()), float(len(x))], dtype=torch.float64)
    all_reduce_sum(sums)
    rows = max(float(sums[2]), 1.0)
    return {"loss": float(sums[0]) / rows, "accuracy": float(sums[1]) / rows, "rows": int(sums[2])}


def streamed_probe_stage(head: nn.Sequential, stage_name: str, train: tuple[ShardRows, np.ndarray],
                         val: tuple[ShardRows, np.ndarray], n_classes: int, seed: int, on_epoch=None) -> list[dict]:
    """probe.probe_stage on streamed rows: one history record, like run_stage's."""
    started = time.perf_counter()
    chosen = fit_streamed_probe(head, *train, n_classes, seed)
    seconds = round(time.perf_counter() - started, 3)
    fitted, held = streamed_scores(head, *train), streamed_scores(head, *val)
    record = {"stage": stage_name, "epoch": 1, "train_loss": fitted["loss"],
              "val_loss": held["loss"] if held["rows"] else 0.0,
              "val_accuracy": held["accuracy"] if held["rows"] else 0.0, "seconds": seconds,
              "solver": "logistic regression (streamed L-BFGS)", "probe": chosen}
    for p in head.parameters():
        p.requires_grad_(False)
    if on_epoch is not None:
        on_epoch(record)
    return [record]


def refit_streamed(head: nn.Sequential, source: ShardRows, targets: np.ndarray, n_classes: int,
                   chosen: dict) -> dict:
    """probe.refit_probe on streamed rows: solved again on training + validation rows at the scaling and C chosen
    on the training rows, started from the head as it is."""
    started = time.perf_counter()
    mean, std, n_rows = feature_statistics(source)
    if chosen["scaling"] == "as given":
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    # the head's weights act on the old statistics' scaling; re-expressed on the new ones, the start is the same map
    scale = std / head[0].std
    weight = head[2].weight.detach().float() * scale
    bias = head[2].bias.detach().float() + head[2].weight.detach().float() @ ((mean - head[0].mean) / head[0].std)
    weight, bias, solve = solve_streamed(source, targets, n_classes, chosen["C"], mean, std, (weight, bias))
    with torch.no_grad():
        head[0].mean.copy_(mean)
        head[0].std.copy_(std)
        head[2].weight.copy_(weight)
        head[2].bias.copy_(bias)
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return {"rows": n_rows, "scaling": chosen["scaling"], "C": chosen["C"], "streamed": solve,
            "seconds": round(time.perf_counter() - started, 3)}


def concat_rows(sources: list[ShardRows]) -> ShardRows:
    """One source over several (training then validation rows, for the final refit)."""
    return ShardRows([part for s in sources for part in s.parts], max(s.dim for s in sources))
