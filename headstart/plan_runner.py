"""Carrying out a strategy's plan: the middle of `fit`, between choosing the plan and storing the result.

Each stage reads the data it needs: cached features when only the head trains on a still-pretrained backbone (the
backbone is never run twice on the same input), the inputs themselves when layer groups unfreeze. A head stage
with a solved head (logistic or ridge regression, probe_heads.py) is solved rather than trained. LoRA adapters
live for their stage only and are merged back, so the result loads like any other model. What the walk returns,
whether the backbone's weights changed, decides how prediction runs: on cached features, or through the whole model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from . import stream
from ._runtime import resolve_workers, seed_everything
from .adapters import LoraSettings, inject_lora, merge_lora
from .backbones import Backbone
from .cache import ShardRows
from .checkpoint import Checkpointer
from .data.labeled import LabeledData
from .heads import TransferModel, loss_for
from .inference import cached_rows, embed
from .probe_heads import SOLVERS, refit_head, solved_stage
from .progress import say
from .strategies import Stage
from .stream import concat_rows, refit_streamed, streamed_probe_stage
from .stream_ridge import refit_streamed_ridge, streamed_ridge_stage
from .train import LoopConfig, run_stage


def run_plan(est, model: TransferModel, stages: list[Stage], train: LabeledData, val: LabeledData, solved: bool,
             loop: LoopConfig, log: Callable[[dict], None] | None, ckpt: Checkpointer | None) -> bool:
    """Run `stages` in order on `model`, appending each epoch's record to `est.history_`. Returns True when the
    backbone's weights changed (a stage that never beat its start leaves them as they were, see train.py)."""
    backbone, head = model.backbone, model.head
    backbone_trained = False
    if ckpt is not None:  # estimator.fit gave the checkpointer row counts only: here it gets the data itself
        ckpt.bind_data(est._modality, train, val)
    for i, stage in enumerate(stages):
        if ckpt is not None and ckpt.skips(i):  # finished before the checkpoint: its weights are in it
            backbone_trained = backbone_trained or not stage.backbone_frozen
            continue
        if ckpt is not None:
            ckpt.earlier_history = list(est.history_)
        generator = seed_everything(est.seed + i)  # each stage repeatable whatever the cache held
        stage_loop = dataclasses.replace(loop, keep_start=i > 0)
        if stage.backbone_frozen and not backbone_trained and solved and streams(est, backbone, train):
            rows = streamed_rows(est, backbone, train), streamed_rows(est, backbone, val)
            records = (streamed_ridge_stage(head, stage.name, *rows, log) if est._task == "regression" else
                       streamed_probe_stage(head, stage.name, *rows, len(est.classes_), est.seed, log))
        elif stage.backbone_frozen and not backbone_trained:
            loaders = feature_loaders(est, backbone, train, val, generator)
            if solved:  # logistic or ridge regression, its penalty by cross-validation
                records = solved_stage(est._task, head, stage.name, *loaders, len(est.classes_), est.seed, log)
            else:
                head[0].set_statistics(loaders[0].dataset.tensors[1])  # standardise on training features
                records = run_stage(head, stage, *loaders, loss_for(est._task), est._task, stage_loop, log, ckpt, i)
        else:
            loaders = input_loaders(est, backbone, train, val, generator, stage.train_batch(est.batch_size))
            if stage.lora is not None:
                inject_lora(backbone, LoraSettings.from_dict(stage.lora))
            records = run_stage(model, stage, *loaders, loss_for(est._task), est._task, stage_loop, log, ckpt, i)
            if stage.lora is not None:
                merge_lora(backbone)  # plain weights again: the bundle loads like any other
            # a stage that lost to the weights it started from leaves the pretrained backbone as it was
            kept = bool(records) and records[-1].get("kept_start", False) and not stage.reinit
            backbone_trained = backbone_trained or not kept
        est.history_.extend(records)
    return backbone_trained


def describe_plan(stages: list[Stage], solved: bool, batch_size: int, task: str = "classification") -> str:
    """The plan in one line, e.g. `head (logistic regression) -> finetune x3 (batch 16)`."""
    def one(i: int, stage: Stage) -> str:
        if solved and stage.backbone_frozen and i == 0:
            return f"{stage.name} ({SOLVERS[task]})"
        batch = f" (batch {stage.train_batch(batch_size)})" if stage.batch_size else ""
        return f"{stage.name} x{stage.epochs}{batch}"

    return " -> ".join(one(i, s) for i, s in enumerate(stages))


def streams(est, backbone: Backbone, train: LabeledData) -> bool:
    """Whether the head stage streams its rows from the cache (stream.py, stream_ridge.py) instead of holding
    them: a classification or regression head on at least STREAM_MIN_ROWS cached rows (read at call time, so a
    test can lower it). Multi-label heads are solved in memory."""
    return (est._task in ("classification", "regression") and len(train) >= stream.STREAM_MIN_ROWS and est.use_cache
            and backbone.cache_features and backbone.spec.source != "pair")


def streamed_rows(est, backbone: Backbone, part: LabeledData) -> tuple[ShardRows, np.ndarray]:
    """This process's share of `part`'s feature rows, cached and left on disk, and their targets."""
    source, positions = cached_rows(backbone, part.items, est.batch_size, est.num_workers, est.cache_dir,
                                    est.verbose)
    targets = est._target_tensor(part.targets[positions]).numpy()
    if est._task != "classification":
        return source, targets
    # class numbers in 2 bytes a row where they fit, not 8 (stream.batch_targets widens each batch's)
    narrow = np.int16 if not len(targets) or int(targets.max()) <= np.iinfo(np.int16).max else np.int32
    return source, targets.astype(narrow)


def feature_loaders(est, backbone: Backbone, train: LabeledData, val: LabeledData,
                    gen: torch.Generator | None) -> tuple[DataLoader, DataLoader]:
    """(row index, cached feature, target) batches; rows whose input could not be read are left out."""
    def loader(part: LabeledData, shuffle: bool) -> DataLoader:
        feats, ok = embed(backbone, part.items, batch_size=est.batch_size, num_workers=est.num_workers,
                          use_cache=est.use_cache, cache_dir=est.cache_dir, verbose=est.verbose)
        keep = np.flatnonzero(ok)
        ds = TensorDataset(torch.as_tensor(keep), torch.as_tensor(feats[keep]), est._target_tensor(part.targets[keep]))
        return DataLoader(ds, batch_size=est.batch_size, shuffle=shuffle, generator=gen)

    return loader(train, True), loader(val, False)


def input_loaders(est, backbone: Backbone, train: LabeledData, val: LabeledData, gen: torch.Generator | None,
                  train_batch: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Batches of the inputs themselves, prepared the backbone's way (training images augmented if asked).
    `train_batch`: the training batch size (Stage.train_batch); validation and None use the estimator's."""
    modality = est._modality

    def loader(part: LabeledData, is_train: bool) -> DataLoader:
        ds = modality.dataset(part.items, est._target_tensor(part.targets).numpy(), backbone, is_train and est.augment)
        size = (train_batch or est.batch_size) if is_train else est.batch_size
        return DataLoader(ds, batch_size=size, shuffle=is_train, generator=gen,
                          num_workers=resolve_workers(est.num_workers), collate_fn=modality.collate(backbone),
                          pin_memory=torch.cuda.is_available())

    return loader(train, True), loader(val, False)


def refit_final_probe(est, backbone: Backbone, train: LabeledData, val: LabeledData) -> None:
    """The final head is the probe: solve it again on training + validation rows (probe.refit_probe says why).
    The validation metrics, already taken, stay those of the head fitted without the hold-out."""
    if est.strategy_["name"] == "blend":  # both of its heads were solved again on these rows (blend.install_blend)
        if est.strategy_.get("refit"):
            est.metrics_["refit"] = est.strategy_["refit"]
        return
    chosen = next((r["probe"] for r in reversed(est.history_) if "probe" in r), None)
    if chosen is None or not len(val):
        return
    if streams(est, backbone, train):
        sources, targets = zip(streamed_rows(est, backbone, train), streamed_rows(est, backbone, val))
        rows, labels = concat_rows(list(sources)), np.concatenate(targets)
        refit = est.metrics_["refit"] = (
            refit_streamed_ridge(est.model_.head, rows, labels) if est._task == "regression" else
            refit_streamed(est.model_.head, rows, labels, len(est.classes_), chosen))
    else:
        parts = [loader.dataset.tensors[1:] for loader in feature_loaders(est, backbone, train, val, None)]
        refit = est.metrics_["refit"] = refit_head(est._task, est.model_.head, parts, len(est.classes_), chosen)
    penalty = (f"alpha={refit['alpha']:g} (chosen again on them by leave-one-out)" if est._task == "regression"
               else f"C={refit['C']}")
    if est._task == "multilabel":  # thresholds chosen on every row out of fold replace the validation rows' choice
        est.metrics_["thresholds"] = refit.pop("thresholds")
        est.thresholds_ = est.metrics_["thresholds"]["thresholds"]
    say(est.verbose, f"head: refitted on all {est.metrics_['refit']['rows']} labeled rows (training + "
        f"validation) at {penalty}; the validation metrics are those of the fit without the hold-out")


def open_run_log(out_dir: str | None, main_process: bool) -> Callable[[dict], None] | None:
    """metrics.jsonl in the run's folder, one line per epoch, flushed: a crash keeps what was learned so far."""
    if not out_dir or not main_process:
        return None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "metrics.jsonl")
    open(path, "w").close()

    def log(record: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    return log
