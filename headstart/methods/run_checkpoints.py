"""The checkpointers of the methods the estimator runs outside its plan (SetFit's tuning, `extend`): each tied to
what its run starts from and to its data's content, so that a resume with other data or options is refused."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..checkpoint import Checkpointer, open_checkpointer, run_checkpointer, tensors_digest
from ..data.labeled import LabeledData
from ..strategies import Stage


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


def extend_checkpointer(est, head: nn.Module, classes: list[str], memory: dict[str, torch.Tensor] | None,
                        options: dict, data: tuple, folder: str | None, resume: str | None) -> Checkpointer | None:
    """The extension's checkpointer, tied to what it starts from (the bundle's head, its exemplars' tensors, the
    options, the classes) and to the data's content."""
    if folder is None:
        return None
    fingerprint = {"extend": options, "classes": classes, "head": tensors_digest(head.state_dict()),
                   "memory": None if memory is None else tensors_digest(memory)}
    checkpointer = open_checkpointer(folder, fingerprint, resume is not None,
                                     "`headstart extend` without --resume (Python: `extend(out_dir=...)`)")
    checkpointer.bind_data(est._modality, *data)
    return checkpointer
