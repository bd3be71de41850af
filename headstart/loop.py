"""The training loop the methods share (multi-task heads, continual heads, SimCLR, masked LM, DANN, SetFit tuning).

A method contributes only what differs: an `nn.Module` objective whose `forward(*batch)` returns the batch's loss
(or `(loss, {name: value})` to log more), the optimiser's parameter groups, a scheduler, and the batches. The loop
does the rest, on Accelerate and through the same epoch loop as `train.run_stage` (`epochs.run_epochs`): device
placement, mixed precision, DDP under `torchrun` / `accelerate launch`, gradient clipping, the progress bar, a
deadline every process agrees on, and losses reduced over processes so every process sees one process's numbers.

Batches: every process builds each whole batch as one process would (same shuffle, same augmentation draws, from
the same seeds) and trains on its share of the rows. Loading is repeated per process; in exchange the data, the
masks and the augmentations are exactly those of a single-process run, and a share weighs in by its row count, so
two processes give one's losses up to float order (as long as the model draws no random numbers itself: dropout
masks are drawn per share).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch import nn

from .checkpoint import Checkpointer
from .distributed import state
from .epochs import Pass, Saving, run_epochs
from .training_step import make_accelerator


@dataclass(frozen=True)
class LoopSettings:
    name: str  # the progress bar's label
    epochs: int
    grad_clip: float | None = None
    mixed_precision: str = "no"  # "auto": bf16 on a CUDA device that has it (training_step.resolve_precision)
    verbose: bool = True
    deadline: float | None = None  # time.perf_counter() after which no batch starts (agreed by every process)


@dataclass
class LoopResult:
    step_losses: list[float] = field(default_factory=list)  # every step's loss, as one process would compute it
    # per epoch: {"epoch", "rows": [each step's rows], "loss": [each step's loss], each logged value's list, and
    # "stopped": True where the deadline ended training in or at the end of that epoch}
    epochs: list[dict] = field(default_factory=list)
    stopped: bool = False  # the deadline ended it


@dataclass
class Resumable:
    """Per-epoch checkpoints of a run_loop, in checkpoint.py's file: the objective's weights (every module it
    trains, a projection head too), the optimiser and scheduler states, every RNG state and the epochs' records.
    When `checkpointer` has loaded a state, the loop restores it and goes on after its epoch, to the weights an
    uninterrupted run ends with."""

    checkpointer: Checkpointer
    generator: torch.Generator | None = None  # the batches' shuffling generator, saved with the other RNG states
    stage: int = 0  # the checkpoint's stage: a run that trains other stages first (DANN after fit's plan) says which


# --- a process's share of a batch ---------------------------------------------------------------------------------
def _rows(batch) -> int | None:
    """Rows of the batch: the first dimension of its first tensor (a dict's in key order)."""
    if isinstance(batch, torch.Tensor):
        return len(batch)
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        n = _rows(v)
        if n is not None:
            return n
    return None


def _bounds(n: int, parts: int) -> list[int]:
    """np.array_split's cut points: shares differ by at most one row, the larger first."""
    base, extra = divmod(n, parts)
    cuts = [0]
    for i in range(parts):
        cuts.append(cuts[-1] + base + (i < extra))
    return cuts


def _share(batch, part: int, parts: int, device: torch.device):
    """This process's share of every tensor in the batch, on `device`: part `part` of `parts` near-equal runs of
    its rows (each tensor by its own row count: a batch may hold source and target rows of different sizes);
    anything else as it is."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            return batch.to(device)
        cuts = _bounds(len(batch), parts)
        return batch[cuts[part]:cuts[part + 1]].to(device)
    if isinstance(batch, Mapping):
        return {k: _share(v, part, parts, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_share(v, part, parts, device) for v in batch)
    return batch


class WholeBatchObjective(nn.Module):
    """Base of objectives whose loss is over the whole batch (contrastive views, pairs), not a mean over rows:
    `forward` passes its embeddings through `self.gather`, which under several processes returns every
    process's rows, this process's own still carrying their gradient. Each process then computes the same
    whole-batch loss, and the loop scales its backward pass by the number of processes, so DDP's average of the
    per-process gradients is the whole batch's gradient."""

    split: bool = False  # set by the loop before each step: this batch is shared out between processes

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return _gather_rows(x) if self.split else x


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    shared = state()
    sizes = [int(s) for s in _all_gather(torch.tensor([len(x)], device=x.device))]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x.detach()
    parts = [p[:n] for p, n in zip(_all_gather(padded).split(max(sizes)), sizes)]
    parts[shared.process_index] = x
    return torch.cat(parts)


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    out = [torch.empty_like(x) for _ in range(state().num_processes)]
    torch.distributed.all_gather(out, x.contiguous())
    return torch.cat(out)


# --- the loop ------------------------------------------------------------------------------------------------------
def _number(v: torch.Tensor | float) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _losses_of(output) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    return output if isinstance(output, tuple) else (output, {})


class _SharedSteps:
    """run_loop's part of the epoch loop (epochs.run_epochs): each process trains on its share of every whole
    batch, and each epoch's record holds every step's rows and logged values, summed over the processes."""

    def __init__(self, accel: Accelerator, model: nn.Module, objective: nn.Module) -> None:
        self.accel, self.model, self.objective = accel, model, objective
        self.n, self.rank = accel.num_processes, accel.process_index
        self.whole_batch = isinstance(objective, WholeBatchObjective)
        self.step_rows: list[int] = []
        self.logged: dict[str, list[float]] = {}
        self.last: tuple[dict, int, float] | None = None  # the step under way: its values, rows and share

    def loss(self, batch) -> torch.Tensor:
        n = self.n
        rows = _rows(batch) or 1
        split = n > 1 and rows >= n  # fewer rows than processes: each trains on the whole batch
        part, parts = (self.rank, n) if split else (0, 1)
        start, stop = _bounds(rows, parts)[part : part + 2]
        if self.whole_batch:
            self.objective.split = split
        loss, extra = _losses_of(self.model(*_share(batch, part, parts, self.accel.device)))
        share = (stop - start) / rows if split and not self.whole_batch else 1 / n
        self.last = ({"loss": loss, **extra}, rows, share)
        # a share's weight in DDP's gradient average: its rows' part of the batch (a whole-batch loss is the same
        # everywhere, and each process contributes only its own rows' gradient)
        weight = n if self.whole_batch and split else (n * (stop - start) / rows if split else 1)
        return loss * weight if weight != 1 else loss

    def stepped(self) -> str:
        values, rows, share = self.last
        self.last = None
        for k, v in values.items():  # read after the step, as the loop always has
            self.logged.setdefault(k, []).append(_number(v) * share)
        self.step_rows.append(rows)
        return f"loss {_number(values['loss']):.3f}"

    def end_epoch(self, epoch: int, stopped: bool, seconds: float) -> tuple[dict, str | None]:
        # one collective per epoch: every process's share of each step's loss and logged values, summed
        keys = list(self.logged)
        table = torch.tensor([self.logged[k] for k in keys], dtype=torch.float64)
        if self.n > 1 and keys:  # every process took the same steps (the deadline is agreed)
            table = self.accel.reduce(table.to(self.accel.device), "sum").cpu()
        record = {"epoch": epoch, "rows": self.step_rows, **{k: table[i].tolist() for i, k in enumerate(keys)}}
        record.setdefault("loss", [])
        if stopped:
            record["stopped"] = True
        self.step_rows, self.logged = [], {}
        return record, "time limit" if stopped else None


def run_loop(
    objective: nn.Module,
    groups: list[dict],
    batches: Callable[[int], Iterable],
    settings: LoopSettings,
    *,
    optimizer: Callable[[list[dict]], torch.optim.Optimizer],
    scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
    steps_per_epoch: int | None = None,
    train_mode: Callable[[], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    resumable: Resumable | None = None,
) -> LoopResult:
    """Train `objective`'s parameters (`groups`) for `settings.epochs` passes over `batches(epoch)` (epoch from 1).

    A `WholeBatchObjective`'s loss is over the rows of every process, not a mean over its own share.
    `train_mode` sets train/eval modes at each epoch's start (default `objective.train()`). `on_epoch` gets each
    epoch's record on the first process only. With `resumable`, a checkpoint is written after every epoch (and a
    loaded one resumed). The objective's parameters are left in place, unwrapped, on the device they trained on.
    """
    # Some trained modules hold weights a method's loss never reaches (a text encoder's pooler under mean pooling):
    # one process leaves their gradients empty, and DDP must be told to expect that too.
    accel = make_accelerator(settings.mixed_precision,
                             kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    opt = optimizer(groups)
    sched = scheduler(opt) if scheduler is not None else None
    model, opt = accel.prepare(objective, opt)
    saving = None if resumable is None else Saving(resumable.checkpointer, objective, sched, resumable.generator,
                                                   stage=resumable.stage)
    run = Pass(settings.name, settings.epochs, steps_per_epoch, settings.grad_clip, settings.verbose,
               settings.deadline, deadline_between_epochs=True)
    history, stopped = run_epochs(accel, opt, [p for g in groups for p in g["params"]], batches,
                                  _SharedSteps(accel, model, objective), run,
                                  scheduler_step=sched.step if sched is not None else None,
                                  train_mode=train_mode or objective.train, on_epoch=on_epoch, saving=saving)
    unwrap(accel, model)
    return LoopResult(step_losses=[loss for record in history for loss in record["loss"]], epochs=history,
                      stopped=stopped)


def unwrap(accel: Accelerator, model: nn.Module) -> nn.Module:
    """The objective without DDP's or autocast's wrappers (its parameters are the method's own modules')."""
    return accel.unwrap_model(model, keep_fp32_wrapper=False)
