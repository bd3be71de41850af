"""The checkpointers of the methods the estimator runs outside its plan (SetFit's tuning, `extend`): each tied to
what its run starts from and to its data's content, so that a resume with other data or options is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from ..checkpoint import Checkpointer, open_checkpointer, run_checkpointer, tensors_digest
from ..data.labeled import LabeledData
from ..strategies import Stage

if TYPE_CHECKING:
    from .continual import ContinualSettings
    from .exemplars import Memory


def tuning_checkpointer(est, resume: str | None, full: LabeledData, split, valid: LabeledData | None,
                        passes: int, log: Callable[[dict], None] | None) -> Checkpointer | None:
    """The tuning's checkpointer, as estimator.fit's (run_checkpointer), tied to the rows it tunes on and to the
    validation rows (given, or held out by `split`)."""
    val = valid if valid is not None else full.subset(split[1] if split is not None else [])
    train = full.subset(split[0]) if split is not None else full
    ckpt = run_checkpointer(est, resume, len(train), len(val), [Stage("setfit", passes)], log)
    if ckpt is not None:
        ckpt.bind_data(est._modality, train, val)
    return ckpt


def extend_checkpointer(est, head: nn.Module, classes: list[str], memory: Memory | None, settings: ContinualSettings,
                        data: tuple, folder: str | None, resume: str | None) -> Checkpointer | None:
    """The extension's checkpointer, tied to what it starts from (the bundle's head, its exemplars, the options,
    the classes) and to the data's content."""
    if folder is None:
        return None
    fingerprint = {"extend": settings.to_dict(), "classes": classes, "head": tensors_digest(head.state_dict()),
                   "memory": None if memory is None else tensors_digest(memory.to_tensors())}
    checkpointer = open_checkpointer(folder, fingerprint, resume is not None, "`headstart extend` (or extend) "
                                     "with this folder")
    checkpointer.bind_data(est._modality, *data)
    return checkpointer
