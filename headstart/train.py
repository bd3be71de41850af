"""A strategy's stage, on Hugging Face Accelerate: CPU, CUDA, mixed precision and multi-process alike.

One call runs one stage of a strategy's plan: it sets which groups train (and at which rate), keeps frozen
BatchNorm in eval mode, runs a one-cycle schedule, and trains through the one epoch loop (epochs.run_epochs, which
loop.run_loop runs through too), whose end-of-epoch hook (stage_epochs.StageSteps) validates each epoch, stops early
on validation loss and keeps the best weights, which the stage leaves in the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from ._runtime import adamw
from .adapters import lora_parameters
from .checkpoint import Checkpointer
from .distributed import loader_config
from .epochs import Pass, Saving, run_epochs
from .heads import TransferModel
from .progress import say
from .stage_epochs import StageSteps, batches_of
from .stage_epochs import beats_start as beats_start  # where it was always imported from
from .strategies import HEAD, LORA, Stage
from .training_step import make_accelerator

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class LoopConfig:
    weight_decay: float = 1e-4
    patience: int = 3
    pct_start: float = 0.25
    grad_clip: float = 1.0
    mixed_precision: str = "auto"  # auto: bf16 on a CUDA device that has it, else full precision
    freeze_bn_stats: bool = True  # Keras' rule for small data: pretrained BatchNorm keeps its statistics
    keep_start: bool = False  # count the starting weights as a candidate for "best" (stages after the first)
    verbose: bool = True
    deadline: float | None = None  # time.perf_counter() when the fit's `time_limit` runs out
    reserve_s: float = 0.0  # ... of which this much is kept for the work after training (scoring, the race)


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


def run_stage(
    model: nn.Module,
    stage: Stage,
    train_loader: DataLoader,
    val_loader: DataLoader,
    loss_fn: nn.Module,
    task: str,
    cfg: LoopConfig,
    on_epoch: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
    stage_index: int = 0,
) -> list[dict]:
    """Train one stage; returns one record per epoch and leaves the best (lowest validation loss) weights.

    With a `checkpointer`, the state is saved after every epoch, and a state it resumed for this stage is
    restored first, so the stage continues after the last finished epoch."""
    accel = make_accelerator(cfg.mixed_precision, dataloader_config=loader_config(train_loader))
    reinitialise(model, stage)
    groups = param_groups(model, stage)
    opt = adamw(groups, weight_decay=cfg.weight_decay)
    steps = max(1, stage.epochs * max(1, len(train_loader)))
    if steps >= 4:
        # one-cycle needs at least one whole step of warm-up: very short stages get a longer warm-up share
        warmup = min(0.5, max(cfg.pct_start, 2.5 / steps))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=warmup
        )
    else:  # a handful of steps: a constant rate is all a schedule could give
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    shuffle_rng = getattr(train_loader.sampler, "generator", None)  # its state is checkpointed with the others
    model, opt, train_loader, val_loader, sched = accel.prepare(model, opt, train_loader, val_loader, sched)
    unwrapped = accel.unwrap_model(model)
    part = StageSteps(accel, model, val_loader, loss_fn, task, cfg.patience, stage.name, on_epoch, checkpointer)
    saved = checkpointer.resume_for(stage_index) if checkpointer is not None else None
    if saved is not None:
        part.resume(saved)  # the loop restores the weights, optimiser, scheduler and RNG states
    elif cfg.keep_start:
        part.keep_start()
    saving = None if checkpointer is None else Saving(checkpointer, unwrapped, sched.scheduler, shuffle_rng,
                                                      stage=stage_index, extra=part.extra)

    def scheduler_step() -> None:
        if sched.scheduler.last_epoch < steps:  # early-stopped plans never overrun the schedule
            sched.step()

    deadline = cfg.deadline - cfg.reserve_s if cfg.deadline is not None else None
    run = Pass(stage.name, stage.epochs, len(train_loader), cfg.grad_clip, cfg.verbose, deadline)
    trainable = [p for g in groups for p in g["params"]]
    history, _ = run_epochs(accel, opt, trainable, lambda _epoch: batches_of(train_loader), part, run,
                            scheduler_step=scheduler_step, saving=saving,
                            train_mode=lambda: set_train_mode(unwrapped, stage, cfg.freeze_bn_stats),
                            finished=lambda state: state.stale >= cfg.patience)  # it had stopped early
    if part.start_is_best and history:
        history[-1]["kept_start"] = True  # the estimator then knows the backbone is still the pretrained one
        say(cfg.verbose and accel.is_main_process,
            f"{stage.name}: kept the weights the stage started from: no epoch beat their validation loss"
            + (" by more than half a standard error" if part.start_rows is not None else ""))
    # without Accelerate's autocast wrapper: the fitted model then predicts in full precision, as it will once saved
    unwrapped = accel.unwrap_model(model, keep_fp32_wrapper=False)
    if part.best_state is not None:
        unwrapped.load_state_dict(part.best_state)
    for p in unwrapped.parameters():
        p.requires_grad_(False)
    return history
