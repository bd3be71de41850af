"""Per-epoch checkpoints, so a killed training run continues where it stopped (`fit --resume DIR`).

One file, `<out>/checkpoint/checkpoint.safetensors`, written atomically (temporary file, then rename) at the end
of every epoch: the weights being trained, the optimiser and scheduler states, the best weights so far, every RNG
state (Python, NumPy, torch, CUDA, the data-shuffling generator), the stage, the epoch and the step, and a digest
of the training and validation data's content and labels (a resume on other data is refused). Tensors go in
the safetensors body and everything else in its JSON metadata: resuming unpickles nothing.

A resumed run restores the states saved at the end of the last finished epoch and replays from the next one, so
it ends with the same weights an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .distributed import is_main_process
from .errors import HeadstartError

if TYPE_CHECKING:
    from .data.labeled import LabeledData
    from .modalities import Modality

FORMAT = "headstart.checkpoint"
FORMAT_VERSION = 1
FOLDER, FILE = "checkpoint", "checkpoint.safetensors"
_PART_NAMES = {"train": "training", "validation": "validation", "target": "unlabeled target"}  # for messages


# --- nested states (optimiser, scheduler, RNG) <-> flat tensors + JSON ------------------------------------------
def _flatten(value, tensors: dict[str, torch.Tensor], path: str):
    """JSON-able form of `value`; its tensors move to `tensors` under their path. Dict keys keep their type."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": path, "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {"__dict__": [[k, _flatten(v, tensors, f"{path}.{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__} at {path}")  # a programming error, not a user's


def _unflatten(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().astype(value["dtype"])
    if "__tuple__" in value:
        return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
    return {k: _unflatten(v, tensors) for k, v in value["__dict__"]}


# --- RNG states --------------------------------------------------------------------------------------------------
def rng_states(generator: torch.Generator | None) -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
              "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    if generator is not None:
        states["loader"] = generator.get_state()
    return states


def set_rng_states(states: dict, generator: torch.Generator | None) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if generator is not None and "loader" in states:
        generator.set_state(states["loader"])


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each restored optimiser state the memory layout of its parameter. States are saved contiguous, and a
    channels-last parameter's moments would come back laid out otherwise: the fused AdamW kernel walks the
    tensors' memory in step, so it would pair each gradient with another element's moments (measured: a resumed
    SimCLR on a channels-last timm model left the uninterrupted run at its first step)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


# --- the checkpoint ----------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Where a run stood at the end of an epoch: enough to replay the rest exactly."""

    stage: int  # index in the strategy's plan
    epoch: int  # last finished epoch of that stage (1-based)
    step: int  # optimiser steps taken in that stage
    model: dict[str, torch.Tensor]  # the module the stage trains (a head alone, or the whole model)
    optimizer: dict
    scheduler: dict
    rng: dict
    best_loss: float
    best_state: dict[str, torch.Tensor] | None
    stale: int
    stage_history: list[dict]  # this stage's epoch records
    earlier_history: list[dict] = field(default_factory=list)  # records of the stages finished before it
    start_losses: list[float] | None = None  # per-row validation losses of the stage's starting weights


class Checkpointer:
    """Saves a `TrainState` per epoch under `<out_dir>/checkpoint/`, and hands the saved one back on resume.

    `fingerprint` describes the run (parameters, data size, plan), and `bind_data` adds the data's content:
    resuming a checkpoint written for another run would silently mix two trainings, so it is refused with a
    message instead.
    """

    def __init__(self, out_dir: str, fingerprint: dict, write: bool = True) -> None:
        self.dir = os.path.join(out_dir, FOLDER)
        self.path = os.path.join(self.dir, FILE)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.write = write  # False on every process but the first: one writer per run
        self.resumed: TrainState | None = None
        self.earlier_history: list[dict] = []  # kept up to date by the estimator as stages finish
        self._data: Callable[[], dict] | None = None  # the data's fingerprint, computed at most once
        self._saved_data: dict | None = None  # the one the loaded checkpoint was written for

    def save(self, state: TrainState) -> None:
        if not self.write:
            return
        tensors: dict[str, torch.Tensor] = {}
        meta = {name: _flatten(getattr(state, name), tensors, name)
                for name in ("model", "optimizer", "scheduler", "rng", "best_state")}
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": self.fingerprint,
                  "stage": state.stage, "epoch": state.epoch, "step": state.step, "best_loss": state.best_loss,
                  "stale": state.stale, "stage_history": state.stage_history,
                  # a method's loop leaves it empty: the records of the stages before it are the checkpointer's
                  "earlier_history": state.earlier_history or self.earlier_history,
                  "start_losses": state.start_losses, "states": meta,
                  "data": self._data() if self._data is not None else None}
        os.makedirs(self.dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=self.dir)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"headstart": json.dumps(header)})
            with open(tmp, "rb") as f:  # on disk before the rename makes it the checkpoint
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load(self, how: str = "`headstart fit` with this --out") -> TrainState:
        """The saved state; a clear error if there is none, it is damaged, or it belongs to another run. `how`:
        the run that writes this checkpoint, for the message when there is none."""
        if not os.path.isfile(self.path):
            raise HeadstartError(f"{self.path}: no checkpoint to resume from; run {how} first (checkpoints are "
                                 "written at the end of each epoch)")
        try:
            with safe_open(self.path, framework="pt") as f:
                header = json.loads((f.metadata() or {})["headstart"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
        except Exception as err:  # safetensors raises its own types for a damaged file
            raise HeadstartError(f"{self.path}: damaged checkpoint ({type(err).__name__}); delete it and "
                                 "train from the start") from None
        if header.get("format") != FORMAT or header.get("format_version", 0) > FORMAT_VERSION:
            raise HeadstartError(f"{self.path}: not a checkpoint this headstart can read; train from the start")
        if header["fingerprint"] != self.fingerprint:
            changed = sorted(k for k in set(header["fingerprint"]) | set(self.fingerprint)
                             if header["fingerprint"].get(k) != self.fingerprint.get(k))
            raise HeadstartError(f"{self.path}: written for a different run (differs in {', '.join(changed)}); "
                                 "resume with the same data and options, or use another --out")
        self._saved_data = header.get("data")
        states = {k: _unflatten(v, tensors) for k, v in header["states"].items()}
        self.resumed = TrainState(stage=header["stage"], epoch=header["epoch"], step=header["step"],
                                  best_loss=header["best_loss"], stale=header["stale"],
                                  stage_history=header["stage_history"], earlier_history=header["earlier_history"],
                                  start_losses=header.get("start_losses"),
                                  **states)
        return self.resumed

    def bind_data(self, modality: Modality, train: LabeledData, val: LabeledData) -> None:
        """Tie the checkpoint to the data's content, not just its row counts: when resuming, refuse a checkpoint
        written for other inputs or labels. The inputs are hashed (images read in full) only when needed: on
        resume, or at the first save; a plan that never checkpoints never pays for it."""
        self.bind_parts(modality, {"train": train, "validation": val})

    def bind_parts(self, modality: Modality, parts: dict[str, LabeledData]) -> None:
        """`bind_data` for any named parts, added to those already bound: a method that reads more data later in
        the run (DANN's unlabeled target inputs, after the source's) binds it then. A part the loaded checkpoint
        does not record was read only after it was written, so there is nothing to compare it with."""
        fingerprints: dict[str, dict] = {}

        def part(key: str) -> dict:
            if key not in fingerprints:
                fingerprints[key] = data_fingerprint(modality, parts[key])
            return fingerprints[key]

        earlier = self._data

        def compute() -> dict:
            return {**(earlier() if earlier is not None else {}), **{key: part(key) for key in parts}}

        self._data = compute
        if self.resumed is None:
            return
        if self._saved_data is None:
            raise HeadstartError(f"{self.path}: written by a headstart that did not record its data's content, so "
                                 "it cannot be checked against this data; train from the start (use another --out)")
        changed = [_PART_NAMES.get(key, key) for key in parts
                   if key in self._saved_data and self._saved_data[key] != part(key)]
        if changed:
            raise HeadstartError(f"{self.path}: written for different {' and '.join(changed)} data (other inputs "
                                 "or labels); resume with the same data, or use another --out")

    def resume_for(self, stage: int) -> TrainState | None:
        """The saved state if it belongs to `stage` (earlier stages are skipped by the estimator)."""
        if self.resumed is not None and self.resumed.stage == stage:
            return self.resumed
        return None

    def skips(self, stage: int) -> bool:
        """True for stages that had finished before the checkpoint was written."""
        return self.resumed is not None and stage < self.resumed.stage

    def remove(self) -> None:
        """Once the bundle is written the checkpoint is redundant (and holds optimiser state: twice the model)."""
        if self.write:
            shutil.rmtree(self.dir, ignore_errors=True)


def data_fingerprint(modality: Modality, data: LabeledData) -> dict:
    """Rows, and one digest of every input's content (the digests the feature cache keys features by) and every
    row's target, in row order: renaming or moving files keeps it, changing a pixel, a text or a label does not."""
    h = hashlib.blake2b(digest_size=16)
    for digest in modality.digests(data.items):
        h.update(digest.encode() + b"\n")
    targets = np.ascontiguousarray(data.targets)
    h.update(json.dumps([data.task, list(data.classes), str(targets.dtype), list(targets.shape)]).encode())
    h.update(targets.tobytes())
    return {"rows": len(data), "content": h.hexdigest()}


# Parameters that change where or how loudly a run works, not what it computes: a resume may change them.
_VOLATILE_PARAMS = ("out_dir", "cache_dir", "verbose", "num_workers", "use_cache")


def run_checkpointer(estimator, resume: str | None, n_train: int, n_val: int, stages: list,
                     log: Callable[[dict], None] | None) -> Checkpointer | None:
    """The estimator's checkpointer (None without an output folder). With `resume`, the saved state is loaded
    and the epochs it records are written back to metrics.jsonl, dropping any logged after it."""
    folder = resume or estimator.out_dir
    if resume and not stages:  # a scikit-learn head: one solve, no epochs to checkpoint
        raise HeadstartError(f"{resume}: head '{estimator.head}' is fitted in one solve and has nothing to resume; "
                             "run it again without --resume")
    if not folder or not stages:
        return None
    fingerprint = {"estimator": type(estimator).__name__, "train": n_train, "validation": n_val,
                   "params": {k: v for k, v in estimator.get_params().items() if k not in _VOLATILE_PARAMS},
                   "stages": [s.to_dict() for s in stages]}
    checkpointer = Checkpointer(folder, fingerprint, write=is_main_process())
    if resume:
        saved = checkpointer.load()
        checkpointer.earlier_history = list(saved.earlier_history)
        # the estimator's records name their stage; the methods' loop keeps its own (steps' losses and rows), and
        # a method resumed from one logs its records itself
        for record in saved.earlier_history + saved.stage_history if log is not None else []:
            if "stage" in record:
                log(record)
    return checkpointer


def tensors_digest(tensors: dict[str, torch.Tensor | np.ndarray]) -> str:
    """One digest of named tensors' values (a bundle's head, an exemplar buffer): for a fingerprint, so a resume
    from other starting weights is refused rather than mixed in."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        value = np.ascontiguousarray(torch.as_tensor(tensors[name]).detach().cpu().numpy())
        h.update(f"{name}:{value.dtype}:{list(value.shape)}\n".encode() + value.tobytes())
    return h.hexdigest()


def open_checkpointer(folder: str, fingerprint: dict, resume: bool, how: str) -> Checkpointer:
    """A method's checkpointer in `folder` (written by the first process only); with `resume`, its saved state
    loaded (`how`: the run that writes it, for the message when there is none)."""
    checkpointer = Checkpointer(folder, fingerprint, write=is_main_process())
    if resume:
        checkpointer.load(how)
    return checkpointer
