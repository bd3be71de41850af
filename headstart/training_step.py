"""What every training shares (`train.run_stage`, a plan's stage, and `loop.run_loop`, the methods' loop, both
through epochs.run_epochs): the Accelerator, set up with the precision asked for (`make_accelerator`,
`resolve_precision`); the one optimiser step every gradient goes through (`optimizer_step`); and a deadline every
process agrees on (`time_is_up`).
"""

from __future__ import annotations

import os
import time

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, is_initialized


def resolve_precision(requested: str) -> str:
    """The "auto" precision: bf16 on CUDA devices that support it (no loss scaling needed, unlike fp16), full
    precision on CPU, where autocast gains little for these convolution-heavy models and changes results."""
    if requested != "auto":
        return requested
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):  # what `accelerate launch --mixed_precision` asked for
        return os.environ["ACCELERATE_MIXED_PRECISION"]
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(mixed_precision: str, **kwargs) -> Accelerator:
    precision = resolve_precision(mixed_precision)
    if is_initialized() and AcceleratorState().mixed_precision != precision:
        # Accelerate keeps one precision per process and refuses another; a later fit that asks for a different
        # one gets a fresh state (the distributed process group, held apart in PartialState, is kept).
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(), **kwargs)

def time_is_up(accel: Accelerator, moment: float) -> bool:
    """Whether time.perf_counter() has passed `moment`, agreed by every process: each process's clock and start
    differ, and one stopping while the others step would leave them waiting on its gradients for ever."""
    past = time.perf_counter() > moment
    if accel.num_processes == 1:
        return past
    return bool(accel.reduce(torch.tensor([float(past)], device=accel.device), "max")[0] > 0)


def optimizer_step(accel: Accelerator, opt: torch.optim.Optimizer, loss: torch.Tensor, trainable: list,
                   grad_clip: float | None) -> None:
    """One optimiser step, the one every training takes (in epochs.run_epochs): clear the gradients, back-propagate
    through Accelerate (loss scaling under fp16, DDP's gradient average), clip, step."""
    opt.zero_grad(set_to_none=True)
    accel.backward(loss)
    if grad_clip:
        accel.clip_grad_norm_(trainable, grad_clip)
    opt.step()

