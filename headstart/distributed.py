"""Multi-process runs (`accelerate launch --num_processes N`, `torchrun`): all communication is Accelerate's.

Training runs under DDP through `Accelerator.prepare`; validation metrics are gathered so every process makes the
same early-stopping decision; feature extraction splits the inputs between processes and gathers the rows; only
the main process writes files (bundle, report, metrics, checkpoints, cache shards). A single process behaves as
if none of this existed.

A streamed head stage (stream.py, for more rows than memory holds) is the exception to the gather: each process
extracts, caches and keeps only its own share (`my_share`), and the processes exchange sums (`all_reduce_sum`:
a loss, a gradient, feature statistics) and small things a decision needs (`gather_small`: a subsample, counts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from accelerate import DataLoaderConfiguration, PartialState
from accelerate.utils import gather_object
from torch.utils.data import DataLoader


def state() -> PartialState:
    # cpu=True where there is no GPU: Accelerate only forms a multi-process CPU group (gloo) when told so, and the
    # first caller fixes the shared state for the process, so every caller must say the same.
    return PartialState(cpu=not torch.cuda.is_available())


def num_processes() -> int:
    return state().num_processes


def is_main_process() -> bool:
    return state().is_main_process


def device() -> torch.device:
    """This process's device: its own GPU under a multi-GPU launch, else CUDA if present, else the CPU."""
    if num_processes() > 1:
        return state().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def rank() -> int:
    return state().process_index


def my_share(n: int) -> range:
    """This process's contiguous share of `n` items (sizes differ by one at most), as ShardRows.split cuts rows."""
    world, me = num_processes(), rank()
    return range(me * n // world, (me + 1) * n // world)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the processes, in place (a CPU tensor: gloo, or copied through this process's device)."""
    if num_processes() == 1:
        return t
    on_device = t.to(state().device)
    torch.distributed.all_reduce(on_device, op=torch.distributed.ReduceOp.SUM)
    t.copy_(on_device.cpu())
    return t


def gather_small(obj: object) -> list:
    """Every process's `obj`, in rank order, on every process: for what a decision needs, never for all rows."""
    if num_processes() == 1:
        return [obj]
    return gather_object([obj])


def loader_config(loader: DataLoader) -> DataLoaderConfiguration:
    """Split each batch between the processes rather than giving each a whole batch: the effective batch, and
    so the learning-rate schedule and the results, stay those of a single-process run."""
    n = num_processes()
    split = n > 1 and loader.batch_size is not None and loader.batch_size % n == 0
    return DataLoaderConfiguration(split_batches=split)


def found_everywhere(found: np.ndarray) -> np.ndarray:
    """Rows every process found in its cache. Each then computes the same missing rows together; without this,
    a process whose cache lags (another node, or a shard not yet written) would wait in a gather alone."""
    if num_processes() == 1:
        return found
    return np.logical_and.reduce(gather_object([found]))


def run_sharded(run: Callable[[list], tuple[np.ndarray, np.ndarray]], items: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """`run(items) -> (rows, ok)` with the items split between processes and the rows gathered on every one."""
    items = list(items)
    if num_processes() == 1:
        return run(items)
    with state().split_between_processes(list(range(len(items)))) as mine:
        rows, ok = run([items[i] for i in mine])
    parts = gather_object([(list(mine), rows, ok)])
    dim = max((p[1].shape[1] for p in parts if p[1].ndim == 2 and len(p[0])), default=0)
    out = np.zeros((len(items), dim), dtype=np.float32)
    found = np.zeros(len(items), dtype=bool)
    for idx, part_rows, part_ok in parts:
        if len(idx) and dim:
            out[idx] = part_rows
            found[idx] = part_ok
    return out, found
