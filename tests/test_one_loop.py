"""Every method trains through loop.run_loop, and gives the per-step losses its own loop gave before (issue 25).

Each test keeps a copy of the method's former loop (`_old_*`, as it was at 3090260) as the reference, runs it and
the method's entry point from the same weights and seeds on a tiny problem, and compares every step's loss. On one
process nothing is reordered (the loop calls the same ops in the same order), so they are equal to the bit.
"""

from __future__ import annotations

import copy

import pytest
import torch

from headstart import loop
from headstart._runtime import adamw
from headstart.multitask import MultiTaskHeads, MultiTaskModel


@pytest.fixture
def captured(monkeypatch):
    """The LoopResult of every run_loop call, in order (the methods keep only epoch summaries)."""
    results = []
    original = loop.run_loop

    def recording(*args, **kwargs):
        results.append(original(*args, **kwargs))
        return results[-1]

    for module in ("multitask", "continual", "pretrain", "adapt", "fewshot"):
        monkeypatch.setattr(f"headstart.{module}.run_loop", recording, raising=False)
    return results


# --- multi-task heads -------------------------------------------------------------------------------------------
def _old_multitask(model: MultiTaskModel, x, y, rows, gen) -> list[float]:
    opt = adamw(model.heads_.parameters(), lr=model.lr, weight_decay=1e-4)
    steps = model.epochs * -(-len(rows) // model.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=model.lr, total_steps=max(steps, 1))
    losses = []
    for _ in range(model.epochs):
        model.heads_.train()
        for idx in rows[torch.randperm(len(rows), generator=gen)].split(model.batch_size):
            loss = model._loss(model.heads_(x[idx]), {n: t[idx] for n, t in y.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    return losses


def multitask_problem(seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(50, 12)
    y = {"kind": (x[:, 0] > 0).long(), "size": x[:, 1] * 2.0}
    model = MultiTaskModel(tasks={"kind": "classification", "size": "regression"}, loss_weights={"size": 0.5},
                           hidden=16, epochs=4, batch_size=16, verbose=False)
    model.heads_ = MultiTaskHeads(12, 16, {"kind": 2, "size": 1})
    model.heads_.trunk[0].set_statistics(x)
    return model, x, y, torch.arange(45)  # 45 rows: the last batch is short


def test_multitask_steps_as_before(captured):
    model, x, y, rows = multitask_problem()
    start = copy.deepcopy(model.heads_.state_dict())
    torch.manual_seed(1)  # dropout draws from the global generator
    before = _old_multitask(model, x, y, rows, torch.Generator().manual_seed(0))
    old_weights = copy.deepcopy(model.heads_.state_dict())
    model.heads_.load_state_dict(start)
    torch.manual_seed(1)
    model._train(x, y, rows, torch.Generator().manual_seed(0))
    assert captured[0].step_losses == before and len(before) == 4 * 3
    for k, v in model.heads_.state_dict().items():
        assert torch.equal(v, old_weights[k]), k
