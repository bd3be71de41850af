"""The one training loop, on Hugging Face Accelerate: CPU, CUDA, mixed precision and multi-process alike.

One call runs one stage of a strategy's plan: it sets which groups train (and at which rate), keeps frozen
BatchNorm in eval mode, runs a one-cycle schedule, validates each epoch, stops early on validation loss and
leaves the best weights in the model. The Accelerate set-up, the optimiser step and the agreed deadline it shares
with loop.run_loop are in training_step.py.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from ._runtime import adamw
from .adapters import lora_parameters
from .checkpoint import Checkpointer, TrainState, match_layouts, rng_states, set_rng_states
from .distributed import loader_config
from .heads import TransferModel
from .progress import make_progress, say
from .strategies import HEAD, LORA, Stage
from .training_step import make_accelerator, optimizer_step, time_is_up

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


def _batches(loader: DataLoader):
    for idx, x, y in loader:
        if x is not None and len(idx):
            yield x, y


@torch.no_grad()
def _val_outputs(model: nn.Module, loader: DataLoader, accel: Accelerator) -> tuple[torch.Tensor, torch.Tensor] | None:
    model.eval()
    outs, targets = [], []
    for x, y in _batches(loader):
        with accel.autocast():
            out = model(x)
        # every process scores the whole validation set, so all make the same early-stopping decision
        out, y = accel.gather_for_metrics((out.float(), y))
        outs.append(out)
        targets.append(y)
    return (torch.cat(outs), torch.cat(targets)) if outs else None


def _summed_over_processes(accel: Accelerator, total_loss: float, seen: int) -> tuple[float, int]:
    """This epoch's summed training loss and example count over every process. Each process sees its share of
    every batch, so one process's sums describe only its share: the record (written by the first process) would
    report the training loss of half the data under two processes."""
    if accel.num_processes == 1:
        return total_loss, seen
    sums = accel.reduce(torch.tensor([total_loss, float(seen)], dtype=torch.float64, device=accel.device), "sum")
    return float(sums[0]), int(sums[1])


def _scores(scored: tuple[torch.Tensor, torch.Tensor] | None, loss_fn: nn.Module, task: str) -> dict:
    if scored is None:
        return {"val_loss": 0.0, **({"val_accuracy": 0.0} if task == "classification" else {})}
    out, y = scored
    result = {"val_loss": float(loss_fn(out, y))}
    if task == "classification":
        result["val_accuracy"] = float((out.argmax(-1) == y).float().mean())
    return result


def _row_losses(scored: tuple[torch.Tensor, torch.Tensor] | None, loss_fn: nn.Module) -> torch.Tensor | None:
    """The validation loss of each row, for losses that can leave the reduction out (torch's own all can)."""
    if scored is None or not hasattr(loss_fn, "reduction"):
        return None
    unreduced = copy.copy(loss_fn)
    unreduced.reduction = "none"
    rows = unreduced(*scored)
    return (rows.reshape(len(rows), -1).mean(1) if rows.dim() > 1 else rows).cpu()


def beats_start(rows: torch.Tensor | None, start_rows: torch.Tensor | None, z: float = 0.5) -> bool:
    """Whether new weights beat the ones the stage started from by more than validation noise.

    On a validation set of a few dozen rows, a fine-tune that lowers the mean loss by 0.001 is as likely worse
    as better. So the paired per-row improvement must exceed `z` standard errors before the starting weights (the
    probe) are given up. z = 0.5 from two measured cases: 64 tweets per class (38 validation rows), gain 0.02 SE,
    and taking it cost 8 test points (0.62 -> 0.54); the text demo (180 rows), gain 0.70 SE, and taking it is
    worth a little on the test set (0.657 -> 0.660, with validation accuracy 0.689 -> 0.694). z = 1 kept the
    probe in both.
    """
    if rows is None or start_rows is None or len(rows) != len(start_rows):
        return True  # nothing to pair: plain lowest-loss selection
    gain = start_rows.double() - rows.double()
    if len(gain) < 2:
        return bool(gain.mean() > 0)
    return bool(gain.mean() > z * gain.std() / math.sqrt(len(gain)))


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
    # The weights a stage starts from are a candidate too: a fine-tune that never beats the linear probe it
    # started from must not leave a worse model behind.
    best_loss, best_state, stale, history = math.inf, None, 0, []
    start_rows = None  # per-row validation losses of the starting weights while they are still the best
    start_is_best = False  # the stage so far leaves its starting weights (a fine-tune that lost to its probe)
    saved = checkpointer.resume_for(stage_index) if checkpointer is not None else None
    if saved is not None:
        accel.unwrap_model(model).load_state_dict(saved.model)
        opt.load_state_dict(saved.optimizer)
        match_layouts(opt)  # channels-last weights: their moments must come back laid out as they are
        sched.scheduler.load_state_dict(saved.scheduler)
        best_loss, best_state, stale, history = saved.best_loss, saved.best_state, saved.stale, saved.stage_history
        set_rng_states(saved.rng, shuffle_rng)
        start_rows = None if saved.start_losses is None else torch.tensor(saved.start_losses)
        start_is_best = start_rows is not None
    elif cfg.keep_start:
        start_is_best = True
        scored = _val_outputs(model, val_loader, accel)
        best_loss, start_rows = _scores(scored, loss_fn, task)["val_loss"], _row_losses(scored, loss_fn)
        best_state = {k: v.detach().clone() for k, v in accel.unwrap_model(model).state_dict().items()}
    trainable = [p for g in groups for p in g["params"]]
    with make_progress(cfg.verbose and accel.is_main_process) as bar:
        task_id = bar.add_task(f"{stage.name}", total=stage.epochs * len(train_loader), info="")
        first_epoch = saved.epoch + 1 if saved is not None else 1
        step = saved.step if saved is not None else 0
        if saved is not None:
            bar.update(task_id, completed=saved.epoch * len(train_loader))
        if saved is not None and stale >= cfg.patience:
            first_epoch = stage.epochs + 1  # it had stopped early before the crash
        out_of_time = False
        for epoch in range(first_epoch, stage.epochs + 1):
            set_train_mode(accel.unwrap_model(model), stage, cfg.freeze_bn_stats)
            start, seen, total_loss = time.perf_counter(), 0, 0.0
            for x, y in _batches(train_loader):
                if cfg.deadline is not None and time_is_up(accel, cfg.deadline - cfg.reserve_s):
                    out_of_time = True  # the epoch ends here: validated, and the best weights kept, as ever
                    break
                with accel.autocast():
                    loss = loss_fn(model(x).float(), y)
                optimizer_step(accel, opt, loss, trainable, cfg.grad_clip)
                step += 1
                if sched.scheduler.last_epoch < steps:  # early-stopped plans never overrun the schedule
                    sched.step()
                total_loss += float(loss.detach()) * len(y)
                seen += len(y)
                bar.update(task_id, advance=1, info=f"epoch {epoch} loss {total_loss / max(seen, 1):.3f}")
            seconds = time.perf_counter() - start
            total_loss, seen = _summed_over_processes(accel, total_loss, seen)
            scored = _val_outputs(model, val_loader, accel)
            record = {"stage": stage.name, "epoch": epoch, "train_loss": total_loss / max(seen, 1),
                      **_scores(scored, loss_fn, task),
                      "seconds": round(seconds, 3), "samples_per_s": round(seen / max(seconds, 1e-9), 1)}
            if out_of_time:
                record["stopped"] = f"time limit, after {seen} of this epoch's examples"
            improved = record["val_loss"] < best_loss - 1e-6
            if improved and start_rows is not None:  # still on the starting weights: beat them beyond noise
                improved = record["beats_start"] = beats_start(_row_losses(scored, loss_fn), start_rows)
                if improved:
                    start_rows = None  # from here on, plain lowest validation loss
            history.append(record)
            if on_epoch is not None and accel.is_main_process:
                on_epoch(record)
            if improved:
                best_loss, stale, start_is_best = record["val_loss"], 0, False
                best_state = {k: v.detach().clone() for k, v in accel.unwrap_model(model).state_dict().items()}
            else:
                stale += 1
            if checkpointer is not None:
                checkpointer.save(TrainState(
                    stage=stage_index, epoch=epoch, step=step, model=accel.unwrap_model(model).state_dict(),
                    optimizer=opt.state_dict(), scheduler=sched.scheduler.state_dict(), rng=rng_states(shuffle_rng),
                    best_loss=best_loss, best_state=best_state, stale=stale, stage_history=history,
                    earlier_history=checkpointer.earlier_history,
                    start_losses=None if start_rows is None else start_rows.tolist()))
            if stale >= cfg.patience or out_of_time:
                why = "time limit" if out_of_time else "early stop"
                bar.update(task_id, completed=stage.epochs * len(train_loader), info=f"{why} at {epoch}")
                break
    if start_is_best and history:
        history[-1]["kept_start"] = True  # the estimator then knows the backbone is still the pretrained one
        say(cfg.verbose and accel.is_main_process,
            f"{stage.name}: kept the weights the stage started from: no epoch beat their validation loss"
            + (" by more than half a standard error" if start_rows is not None else ""))
    # without Accelerate's autocast wrapper: the fitted model then predicts in full precision, as it will once saved
    unwrapped = accel.unwrap_model(model, keep_fp32_wrapper=False)
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    for p in unwrapped.parameters():
        p.requires_grad_(False)
    return history
