"""The one epoch loop: `train.run_stage` (a strategy's stage) and `loop.run_loop` (the methods' loop) both train
through `run_epochs`.

It is the only place that iterates epochs and batches, checks the deadline every process agrees on, takes the
optimiser step (`training_step.optimizer_step`) and the scheduler's, drives the progress bar, and saves a checkpoint
after every epoch (restoring one first on resume). Each caller keeps what differs, and hands it in:

- `EpochSteps.loss`: how a batch becomes a loss. run_loop shares each whole batch between processes and weighs the
  shares; run_stage's batches are already this process's (Accelerate's sharded loaders) and meet its loss function.
- `EpochSteps.stepped`: what it counts after each step (per-step losses; a running training loss).
- `EpochSteps.end_epoch`, on every process: the epoch's record and whether training stops. run_stage validates,
  keeps the best weights and decides early stopping there; run_loop reduces its per-step table.
- `Saving`: what a checkpoint holds beyond the weights, optimiser, scheduler and RNG states (run_stage's best
  weights so far, its patience count, ...).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from torch import nn

from .checkpoint import Checkpointer, TrainState, match_layouts, rng_states, set_rng_states
from .progress import make_progress
from .training_step import optimizer_step, time_is_up


class EpochSteps(Protocol):
    """A caller's part of the loop (see the module's docstring)."""

    def loss(self, batch: Any) -> torch.Tensor:
        """The forward pass on one batch, under autocast: the loss to back-propagate."""

    def stepped(self) -> str:
        """After the optimiser's and the scheduler's step: count the batch in; the progress bar's loss text."""

    def end_epoch(self, epoch: int, stopped: bool, seconds: float) -> tuple[dict, str | None]:
        """On every process, after the epoch's last batch (`stopped`: the deadline ended it; `seconds`: its training
        time): the epoch's record, and why training stops after it (None: it goes on)."""


@dataclass
class Saving:
    """Per-epoch checkpoints: saved after every epoch, and restored before the first when `checkpointer` has loaded
    a state for `stage`."""

    checkpointer: Checkpointer
    module: nn.Module  # whose weights are saved: the unwrapped module being trained
    scheduler: Any | None  # the torch scheduler whose state is saved (not Accelerate's wrapper), or None
    generator: torch.Generator | None = None  # the batches' shuffling generator, saved with the other RNG states
    stage: int = 0
    extra: Callable[[], dict] | None = None  # the caller's own TrainState fields, as they stand at the save

    def restore(self, opt: torch.optim.Optimizer) -> TrainState | None:
        saved = self.checkpointer.resume_for(self.stage)
        if saved is None:
            return None
        self.module.load_state_dict(saved.model)
        opt.load_state_dict(saved.optimizer)
        match_layouts(opt)  # channels-last weights: their moments must come back laid out as they are
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved.scheduler)
        set_rng_states(saved.rng, self.generator)
        return saved

    def save(self, opt: torch.optim.Optimizer, epoch: int, step: int, history: list[dict]) -> None:
        fields = {"best_loss": math.nan, "best_state": None, "stale": 0, **(self.extra() if self.extra else {})}
        self.checkpointer.save(TrainState(
            stage=self.stage, epoch=epoch, step=step, model=self.module.state_dict(), optimizer=opt.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else {},
            rng=rng_states(self.generator), stage_history=history, **fields))


@dataclass(frozen=True)
class Pass:
    """How the loop runs: the bar's label, the epochs and the agreed deadline."""

    name: str
    epochs: int
    steps_per_epoch: int | None = None  # the progress bar's unit (None: a bar without a total)
    grad_clip: float | None = None
    verbose: bool = True
    deadline: float | None = None  # time.perf_counter() after which no batch starts
    # run_loop also ends at an epoch's end once the deadline has passed; run_stage starts the next epoch, which
    # stops before its first batch and is validated and recorded as such (each as it always did)
    deadline_between_epochs: bool = False


def run_epochs(
    accel: Accelerator,
    opt: torch.optim.Optimizer,
    trainable: list[torch.nn.Parameter],
    batches: Callable[[int], Iterable],
    steps: EpochSteps,
    run: Pass,
    *,
    scheduler_step: Callable[[], None] | None = None,
    train_mode: Callable[[], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    saving: Saving | None = None,
    finished: Callable[[TrainState], bool] | None = None,
) -> tuple[list[dict], bool]:
    """Train for `run.epochs` passes over `batches(epoch)` (epoch from 1); returns the epochs' records (a resumed
    run's first) and whether the deadline ended training.

    `scheduler_step` runs after every optimiser step; `train_mode` at each epoch's start; `on_epoch` gets each
    record on the first process only, after its checkpoint is saved. With `saving`, a loaded state is restored
    first and training goes on after its epoch (none at all where `finished(state)` says it had stopped)."""
    saved = saving.restore(opt) if saving is not None else None
    history = list(saved.stage_history) if saved is not None else []
    step = saved.step if saved is not None else 0
    stopped = False
    with make_progress(run.verbose and accel.is_main_process) as bar:
        total = run.epochs * run.steps_per_epoch if run.steps_per_epoch else None
        task = bar.add_task(run.name, total=total, info="")
        if saved is not None and run.steps_per_epoch:
            bar.update(task, completed=saved.epoch * run.steps_per_epoch)
        first = saved.epoch + 1 if saved is not None else 1
        if saved is not None and finished is not None and finished(saved):
            first = run.epochs + 1  # it had stopped before the crash
        for epoch in range(first, run.epochs + 1):
            if train_mode is not None:
                train_mode()
            start = time.perf_counter()
            for batch in batches(epoch):
                if run.deadline is not None and time_is_up(accel, run.deadline):
                    stopped = True  # the epoch ends here, and is recorded (run_stage: validated) as ever
                    break
                with accel.autocast():
                    loss = steps.loss(batch)
                optimizer_step(accel, opt, loss, trainable, run.grad_clip)
                step += 1
                if scheduler_step is not None:
                    scheduler_step()
                bar.update(task, advance=1, info=f"epoch {epoch} {steps.stepped()}")
            seconds = time.perf_counter() - start
            if run.deadline_between_epochs and run.deadline is not None and not stopped:
                stopped = time_is_up(accel, run.deadline)  # an epoch begun now would stop before its first step
            record, why = steps.end_epoch(epoch, stopped, seconds)
            history.append(record)
            if saving is not None:
                saving.save(opt, epoch, step, history)
            if on_epoch is not None and accel.is_main_process:
                on_epoch(record)
            if why is not None:
                bar.update(task, completed=total, info=f"{why} at {epoch}")
                break
    return history, stopped
