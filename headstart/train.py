"""The one training loop, on Hugging Face Accelerate: CPU, CUDA, mixed precision and multi-process alike.

One call runs one stage of a strategy's plan: it sets which groups train (and at which rate), keeps frozen
BatchNorm in eval mode, runs a one-cycle schedule, validates each epoch, stops early on validation loss and
leaves the best weights in the model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from .adapters import lora_parameters
from .heads import TransferModel
from .progress import make_progress
from .strategies import HEAD, LORA, Stage

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class LoopConfig:
    weight_decay: float = 1e-4
    patience: int = 3
    pct_start: float = 0.25
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    freeze_bn_stats: bool = True  # Keras' rule for small data: pretrained BatchNorm keeps its statistics
    keep_start: bool = False  # count the starting weights as a candidate for "best" (stages after the first)
    verbose: bool = True


def param_groups(model: nn.Module, stage: Stage) -> list[dict]:
    """Optimizer groups from the stage's rates; everything not named there is frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    if not isinstance(model, TransferModel):  # a head alone, trained on cached features
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        return [{"params": params, "lr": stage.lrs[HEAD], "name": HEAD}]
    groups = [{"params": list(model.head.parameters()), "lr": stage.lrs[HEAD], "name": HEAD}]
    if stage.lora is not None:  # adapters only: the injected body's own weights stay frozen
        groups.append({"params": lora_parameters(model.backbone), "lr": stage.lrs[LORA], "name": LORA})
        for g in groups:
            for p in g["params"]:
                p.requires_grad_(True)
        return groups
    for name, params in model.backbone.layer_groups().items():
        if name in stage.lrs:
            groups.append({"params": params, "lr": stage.lrs[name], "name": name})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    return groups


def set_train_mode(model: nn.Module, stage: Stage, freeze_bn_stats: bool) -> None:
    """Train mode, except BatchNorm in frozen groups (always) and in pretrained groups (if freeze_bn_stats)."""
    model.train()
    if not isinstance(model, TransferModel):
        return
    backbone = model.backbone
    if stage.lora is not None:  # the base weights are frozen: so is every BatchNorm's statistics
        for m in backbone.modules():
            if isinstance(m, _BATCHNORM):
                m.eval()
        return
    if stage.backbone_frozen:
        backbone.eval()
        return
    frozen = [g for g in backbone.group_names() if g not in stage.lrs]
    pretrained = [g for g in backbone.group_names() if g not in stage.reinit]
    keep_eval = pretrained if freeze_bn_stats else frozen
    for m in backbone.modules_in_groups(keep_eval):
        if isinstance(m, _BATCHNORM):
            m.eval()


def reinitialise(model: nn.Module, stage: Stage) -> None:
    """Fresh weights (and BatchNorm statistics) for the stage's `reinit` groups: new layers to train from scratch."""
    if not stage.reinit or not isinstance(model, TransferModel):
        return
    for m in model.backbone.modules_in_groups(stage.reinit):
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _batches(loader: DataLoader):
    for idx, x, y in loader:
        if x is not None and len(idx):
            yield x, y


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, task: str, accel: Accelerator) -> dict:
    model.eval()
    total, n, correct = 0.0, 0, 0
    for x, y in _batches(loader):
        with accel.autocast():
            out = model(x)
        total += float(loss_fn(out.float(), y)) * len(y)
        n += len(y)
        if task == "classification":
            correct += int((out.argmax(-1) == y).sum())
    result = {"val_loss": total / max(n, 1)}
    if task == "classification":
        result["val_accuracy"] = correct / max(n, 1)
    return result


def run_stage(
    model: nn.Module,
    stage: Stage,
    train_loader: DataLoader,
    val_loader: DataLoader,
    loss_fn: nn.Module,
    task: str,
    cfg: LoopConfig,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train one stage; returns one record per epoch and leaves the best (lowest validation loss) weights."""
    accel = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    reinitialise(model, stage)
    groups = param_groups(model, stage)
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps = max(1, stage.epochs * max(1, len(train_loader)))
    if steps >= 4:
        # one-cycle needs at least one whole step of warm-up: very short stages get a longer warm-up share
        warmup = min(0.5, max(cfg.pct_start, 2.5 / steps))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=warmup
        )
    else:  # a handful of steps: a constant rate is all a schedule could give
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    model, opt, train_loader, val_loader, sched = accel.prepare(model, opt, train_loader, val_loader, sched)
    # The weights a stage starts from are a candidate too: a fine-tune that never beats the linear probe it
    # started from must not leave a worse model behind.
    best_loss, best_state, stale, history = math.inf, None, 0, []
    if cfg.keep_start:
        best_loss = evaluate_loss(model, val_loader, loss_fn, task, accel)["val_loss"]
        best_state = {k: v.detach().clone() for k, v in accel.unwrap_model(model).state_dict().items()}
    trainable = [p for g in groups for p in g["params"]]
    with make_progress(cfg.verbose and accel.is_main_process) as bar:
        task_id = bar.add_task(f"{stage.name}", total=stage.epochs * len(train_loader), info="")
        for epoch in range(1, stage.epochs + 1):
            set_train_mode(accel.unwrap_model(model), stage, cfg.freeze_bn_stats)
            start, seen, total_loss = time.perf_counter(), 0, 0.0
            for x, y in _batches(train_loader):
                with accel.autocast():
                    loss = loss_fn(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                accel.backward(loss)
                if cfg.grad_clip:
                    accel.clip_grad_norm_(trainable, cfg.grad_clip)
                opt.step()
                if sched.scheduler.last_epoch < steps:  # early-stopped plans never overrun the schedule
                    sched.step()
                total_loss += float(loss.detach()) * len(y)
                seen += len(y)
                bar.update(task_id, advance=1, info=f"epoch {epoch} loss {total_loss / max(seen, 1):.3f}")
            seconds = time.perf_counter() - start
            record = {"stage": stage.name, "epoch": epoch, "train_loss": total_loss / max(seen, 1),
                      **evaluate_loss(model, val_loader, loss_fn, task, accel),
                      "seconds": round(seconds, 3), "samples_per_s": round(seen / max(seconds, 1e-9), 1)}
            history.append(record)
            if on_epoch is not None and accel.is_main_process:
                on_epoch(record)
            if record["val_loss"] < best_loss - 1e-6:
                best_loss, stale = record["val_loss"], 0
                best_state = {k: v.detach().clone() for k, v in accel.unwrap_model(model).state_dict().items()}
            else:
                stale += 1
                if stale >= cfg.patience:
                    bar.update(task_id, completed=stage.epochs * len(train_loader), info=f"early stop at {epoch}")
                    break
    unwrapped = accel.unwrap_model(model)
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    for p in unwrapped.parameters():
        p.requires_grad_(False)
    return history
