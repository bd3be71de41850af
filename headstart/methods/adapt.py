"""Domain adaptation: labeled source data plus unlabeled data from the target domain, one switch per method.

`fit(data, unlabeled=DIR_OR_FILE)` trains on the source as usual, then adapts the fitted model (`adapt=`):
* `adabn` (Li et al. 2016): BatchNorm statistics re-estimated. Source statistics first, and the head retrained on
  the features they give, then target statistics swapped in: each domain is normalised by its own moments, so
  the head sees target features on the scale it was trained on. One pass over each domain, no gradient steps.
* `coral` (Sun et al. 2016, CORrelation ALignment): source features are whitened with their own covariance and
  re-coloured with the target's (and moved to the target mean), and the head is retrained on them. Any backbone;
  on cached features, so it costs a few seconds.
* `dann` (Ganin et al. 2016): a domain classifier on the features, trained through a gradient-reversal layer so
  the backbone learns features that predict the labels but not the domain. Costs fine-tuning.
* `auto`: `coral`, the one that helped on bench/domain_shift.py (docs/methods.md has the numbers).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .._runtime import adamw
from ..checkpoint import Checkpointer
from ..data.labeled import LabeledData
from ..errors import DataError, HeadstartError
from ..heads import Standardize, loss_for
from ..inference import _device, _to, embed, run_over
from ..loop import LoopSettings, Resumable, run_loop
from ..modalities import modality_of
from ..progress import make_progress, say
from ..strategies import HEAD, Stage
from ..train import LoopConfig, run_stage
from .target_cycle import TargetCycle, target_loader

ADAPT_METHODS = ("auto", "adabn", "coral", "dann")
_BATCHNORM = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, _BATCHNORM)]


def choose_method(backbone: nn.Module) -> tuple[str, str]:
    # bench/domain_shift.py (Fashion-MNIST -> inverted, Lite0): CORAL gained on source-only where AdaBN lost and
    # DANN tied at ~7x CORAL's cost; CORAL also works on any backbone
    return "coral", "align the source features' covariance to the target's and retrain the head (cheap, any backbone)"


def _loader(backbone, items: Sequence, targets: np.ndarray | None, train: bool, batch_size: int,
            generator: torch.Generator | None = None) -> DataLoader:
    modality = modality_of(backbone)
    return DataLoader(modality.dataset(items, targets, backbone, train), batch_size=batch_size, shuffle=train,
                      collate_fn=modality.collate(backbone), generator=generator, drop_last=False)


@torch.no_grad()
def reestimate_batchnorm(backbone: nn.Module, items: Sequence, batch_size: int = 32, verbose: bool = True) -> int:
    """Replace every BatchNorm's running mean and variance by those of `items` (a cumulative average over
    batches, not a moving one, so every item counts the same). Returns how many layers were updated."""
    layers = batchnorm_layers(backbone)
    if not layers:
        raise HeadstartError(f"backbone '{backbone.spec.name}' has no BatchNorm layer for AdaBN to re-estimate; "
                             "use adapt='coral' or adapt='dann'")
    device = _device()
    backbone.to(device).eval()
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    with make_progress(verbose) as bar:
        task = bar.add_task("adabn statistics", total=len(items), info="")
        for idx, x, _ in _loader(backbone, items, None, False, batch_size):
            if x is not None and len(idx) > 1:  # a single row has no variance
                backbone(_to(x, device))
            bar.update(task, advance=len(idx))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    backbone.eval()
    return len(layers)


def coral_transform(source: np.ndarray, target: np.ndarray, eps: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) such that `source @ A + b` has the target's mean and (regularised) covariance.

    The ridge `eps` is relative to the average variance, so it means the same for every backbone's feature scale;
    it keeps the whitening stable when there are fewer rows than feature dimensions.
    """
    def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = x.astype(np.float64)
        cov = np.cov(x, rowvar=False) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))
        ridge = eps * max(float(np.trace(cov)) / len(cov), 1e-8)
        return x.mean(0), cov + ridge * np.eye(len(cov))

    def power(cov: np.ndarray, p: float) -> np.ndarray:
        vals, vecs = np.linalg.eigh(cov)
        return (vecs * np.clip(vals, 1e-12, None) ** p) @ vecs.T

    mu_s, cov_s = moments(source)
    mu_t, cov_t = moments(target)
    a = power(cov_s, -0.5) @ power(cov_t, 0.5)
    return a.astype(np.float32), (mu_t - mu_s @ a).astype(np.float32)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


def reverse_gradient(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient flows back multiplied by -strength (DANN's gradient-reversal layer)."""
    return _ReverseGradient.apply(x, strength)


class _DannObjective(nn.Module):
    """The loop's objective: the label loss on source rows plus the domain classifier's loss on source and target
    features, reached through the gradient-reversal layer."""

    def __init__(self, backbone: nn.Module, head: nn.Module, norm: nn.Module, discriminator: nn.Module,
                 target: TargetCycle | None = None) -> None:
        super().__init__()
        self.backbone, self.head, self.norm, self.discriminator = backbone, head, norm, discriminator
        self.target = target  # its position in the target set is checkpointed with the weights
        self.label_loss, self.domain_loss = loss_for("classification"), nn.BCEWithLogitsLoss()

    def forward(self, xs, ys: torch.Tensor, xt, strength: float) -> tuple[torch.Tensor, dict]:
        fs, ft = self.backbone(xs), self.backbone(xt) if xt is not None else None
        loss_y = self.label_loss(self.head(fs), ys)
        feats = fs if ft is None else torch.cat([fs, ft])
        domains = torch.cat([torch.zeros(len(fs)), torch.ones(len(feats) - len(fs))]).to(fs.device)
        logits = self.discriminator(reverse_gradient(self.norm(feats), strength)).squeeze(-1)
        loss_d = self.domain_loss(logits, domains)
        accuracy = ((logits > 0).float() == domains).float().mean()
        return loss_y + loss_d, {"label": loss_y, "domain": loss_d, "domain_accuracy": accuracy}


def dann_train(model: nn.Module, source: LabeledData, target_items: Sequence, *, epochs: int, lr: float,
               batch_size: int, seed: int = 0, verbose: bool = True, mixed_precision: str = "no",
               checkpointer: Checkpointer | None = None, stage: int = 0) -> list[dict]:
    """Train backbone and head on the source labels while a domain classifier, behind a gradient-reversal layer,
    tries to tell source from target features. The reversal strength ramps 0 -> 1 (Ganin's schedule) so the
    label loss shapes the features before the domain loss does. Pretrained BatchNorm statistics stay fixed.
    With a `checkpointer`, the whole model and the domain classifier are checkpointed after every epoch (as
    `stage`), and a loaded checkpoint of that stage is resumed to the weights an uninterrupted run ends with."""
    backbone, head = model.backbone, model.head
    norm = head[0] if isinstance(head, nn.Sequential) and isinstance(head[0], Standardize) else nn.Identity()
    discriminator = nn.Sequential(nn.Linear(backbone.feature_dim, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 1))
    generator = torch.Generator().manual_seed(seed)
    src = _loader(backbone, source.items, source.targets, True, batch_size, generator)
    target = TargetCycle(target_loader(backbone, target_items, batch_size, generator))
    groups = [{"params": list(head.parameters()), "lr": lr * 0.1},
              {"params": list(backbone.parameters()), "lr": lr * 0.1},
              {"params": list(discriminator.parameters()), "lr": lr}]
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    steps = epochs * len(src)
    saved = checkpointer.resume_for(stage) if checkpointer is not None else None
    if saved is None:  # one shuffling generator for both loaders: this order keeps its draws
        target.begin()
    cursor = {"step": saved.step if saved is not None else 0}  # the reversal strength's position in its ramp

    def batches(_epoch: int):
        for _, xs, ys in src:
            if xs is None:
                continue
            _, xt, _ = target.next()  # the target set is cycled as often as the source needs
            strength = 2.0 / (1.0 + math.exp(-10.0 * cursor["step"] / max(steps, 1))) - 1.0
            cursor["step"] += 1
            yield xs, ys, xt, strength

    def train_mode() -> None:
        model.train()
        discriminator.train()
        for m in batchnorm_layers(backbone):
            m.eval()

    result = run_loop(_DannObjective(backbone, head, norm, discriminator, target), groups, batches,
                      LoopSettings("dann", epochs, grad_clip=1.0, mixed_precision=mixed_precision, verbose=verbose),
                      optimizer=lambda g: adamw(g, weight_decay=1e-4), steps_per_epoch=len(src),
                      train_mode=train_mode,
                      resumable=None if checkpointer is None else Resumable(checkpointer, generator, stage))
    history = []
    for r in result.epochs:
        means = {k: _row_weighted(r[k], r["rows"]) for k in ("label", "domain", "domain_accuracy")}
        history.append({"stage": "dann", "epoch": r["epoch"], "train_loss": means["label"],
                        "val_loss": float("nan"),  # no early stopping: the source validation set is not the goal
                        "domain_loss": means["domain"], "domain_accuracy": means["domain_accuracy"]})
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return history


def _row_weighted(values: list[float], rows: list[int]) -> float:
    total, seen = 0.0, 0
    for v, n in zip(values, rows):
        total, seen = total + v * n, seen + n
    return total / max(seen, 1)


def _features(est, backbone, items: Sequence, trained: bool) -> tuple[np.ndarray, np.ndarray]:
    if trained:  # fine-tuned weights: the cache holds the pretrained backbone's features, not these
        return run_over(backbone, items, est.batch_size, est.num_workers, est.verbose)
    return embed(backbone, items, batch_size=est.batch_size, num_workers=est.num_workers, use_cache=est.use_cache,
                 cache_dir=est.cache_dir, verbose=est.verbose)


def _retrain_head(est, head: nn.Module, name: str, train: tuple[np.ndarray, np.ndarray],
                  val: tuple[np.ndarray, np.ndarray], log) -> tuple[Stage, list[dict]]:
    """The head trained again (from its current weights) on given feature rows: standardised on them first."""
    gen = torch.Generator().manual_seed(est.seed)

    def loader(part: tuple[np.ndarray, np.ndarray], shuffle: bool) -> DataLoader:
        x, y = part
        ds = TensorDataset(torch.arange(len(x)), torch.as_tensor(x, dtype=torch.float32), est._target_tensor(y))
        return DataLoader(ds, batch_size=est.batch_size, shuffle=shuffle, generator=gen)

    stage = Stage(name, est.head_epochs, {HEAD: est.lr})
    if isinstance(head, nn.Sequential) and isinstance(head[0], Standardize):
        head[0].set_statistics(torch.as_tensor(train[0], dtype=torch.float32))
    cfg = LoopConfig(patience=est.patience, mixed_precision="no", verbose=est.verbose)
    return stage, run_stage(head, stage, loader(train, True), loader(val, False), loss_for(est._task), est._task,
                            cfg, log)


def target_items(est, unlabeled) -> list:
    """The unlabeled target inputs: a folder or file of images or texts, or a list of them."""
    given = [unlabeled] if isinstance(unlabeled, (str, os.PathLike)) else list(unlabeled)
    items = est._modality.list_inputs(given)
    if len(items) < 2:
        raise DataError(f"{unlabeled}: domain adaptation needs at least 2 unlabeled target {est._modality.noun}, "
                        f"found {len(items)}; point unlabeled= at a folder or file of target-domain inputs")
    return items


def adapt_to_target(est, model: nn.Module, train: LabeledData, val: LabeledData, unlabeled, stages: list,
                    backbone_trained: bool, log, ckpt: Checkpointer | None = None) -> bool:
    """Adapt the just-fitted `model` to the target domain with method `est.adapt`; appends what it did to
    `stages` and `est.history_`. Returns whether the backbone's weights or statistics now differ from the
    pretrained ones (predictions must then run through the model, not the feature cache).

    With fit's checkpointer, `dann` checkpoints every epoch as the stage after the plan's (`fit(resume=DIR)` then
    skips the plan, whose result the checkpoint's weights include), tied to the target inputs' content too. AdaBN
    and CORAL take seconds and are run again."""
    if est._task != "classification":
        raise HeadstartError(f"domain adaptation supports classification only, not {est._task}")
    method = getattr(est, "adapt", "auto") or "auto"
    if method not in ADAPT_METHODS:
        raise HeadstartError(f"unknown adapt method '{method}': choose one of {', '.join(ADAPT_METHODS)}")
    items = target_items(est, unlabeled)
    backbone, head = model.backbone, model.head
    if method == "auto":
        method, why = choose_method(backbone)
        say(est.verbose, f"adapt: -> {method}: {why}")
    say(est.verbose, f"adapt: {method} to {len(items)} unlabeled target {est._modality.noun}")
    if method == "adabn":
        reestimate_batchnorm(backbone, train.items, est.batch_size, est.verbose)  # source statistics first
        fs, ok_s = _features(est, backbone, train.items, trained=True)
        fv, ok_v = _features(est, backbone, val.items, trained=True)
        stage, records = _retrain_head(est, head, "adabn-head", (fs[ok_s], train.targets[ok_s]),
                                       (fv[ok_v], val.targets[ok_v]), log)
        reestimate_batchnorm(backbone, items, est.batch_size, est.verbose)  # then the target's, for prediction
        stages.extend([Stage("adabn-source", 0), stage, Stage("adabn-target", 0)])
        est.history_.extend(records)
        return True
    if method == "coral":
        fs, ok_s = _features(est, backbone, train.items, backbone_trained)
        fv, ok_v = _features(est, backbone, val.items, backbone_trained)
        ft, ok_t = _features(est, backbone, items, backbone_trained)
        a, b = coral_transform(fs[ok_s], ft[ok_t])
        stage, records = _retrain_head(est, head, "coral-head", (fs[ok_s] @ a + b, train.targets[ok_s]),
                                       (fv[ok_v] @ a + b, val.targets[ok_v]), log)
        stages.append(stage)
        est.history_.extend(records)
        return backbone_trained
    if ckpt is not None:
        ckpt.earlier_history = list(est.history_)  # the plan's records, restored with the weights on resume
        ckpt.bind_parts(est._modality, {"target": LabeledData(items, np.zeros(len(items), np.int64), [])})
    records = dann_train(model, train, items, epochs=max(1, est.epochs), lr=est.lr, batch_size=est.batch_size,
                         seed=est.seed, verbose=est.verbose, mixed_precision=est.mixed_precision, checkpointer=ckpt,
                         stage=len(stages))
    stages.append(Stage("dann", max(1, est.epochs), {HEAD: est.lr * 0.1}))
    est.history_.extend(records)
    if log is not None:
        for r in records:
            log(r)
    return True
