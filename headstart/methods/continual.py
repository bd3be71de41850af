"""Continual learning: teach a fitted classifier new classes later without forgetting the old ones.

Everything here works on the head, over features of the (frozen) backbone the bundle holds: cheap on a CPU, and
the backbone's features stay what they were, so an exemplar buffer of stored *features* stays valid.

Methods (one switch, `method=`):
- `finetune`: train the grown head on the new data alone. The baseline: it forgets old classes almost at once.
- `rehearsal`: mix a small exemplar buffer of old-class features into the new data (iCaRL's herding picks the
  exemplars whose mean best matches the class mean). The buffer lives in the bundle (exemplars.py).
- `lwf`: Learning without Forgetting: the old head's outputs on the new data are distillation targets for the
  old classes' outputs (no old data needed).
- `ewc`: Elastic Weight Consolidation: a quadratic pull on each old parameter, weighted by its Fisher information
  on old-class data (the buffer when there is one, else the new data as the old head sees it).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._runtime import adamw, keeps_callers_rng
from ..checkpoint import Checkpointer
from ..data.labeled import stratified_split
from ..errors import HeadstartError
from ..inference import embed
from ..loop import LoopSettings, Resumable, run_loop
from ..progress import say
from .exemplars import Memory, build_memory
from .run_checkpoints import extend_checkpointer

METHODS = ("finetune", "rehearsal", "lwf", "ewc")


@dataclass(frozen=True)
class ContinualSettings:
    """How `extend` trains: the method, its strength, and the head's optimisation."""

    method: str = "rehearsal"
    memory_per_class: int = 20  # exemplars kept per class for rehearsal (and EWC's Fisher)
    lwf_weight: float = 1.0
    temperature: float = 2.0
    ewc_weight: float = 10.0  # on the Fisher scaled to mean 1 (see fisher_diagonal)
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise HeadstartError(f"unknown continual method '{self.method}': choose one of {', '.join(METHODS)}")
        if self.memory_per_class < 0:
            raise HeadstartError(f"memory per class must be >= 0, not {self.memory_per_class}")

    def to_dict(self) -> dict:
        return asdict(self)


def output_layer(head: nn.Module) -> nn.Linear:
    last = head[-1] if isinstance(head, nn.Sequential) else None
    if not isinstance(last, nn.Linear):
        raise HeadstartError("continual learning needs a torch head ending in a linear layer (head 'linear' or "
                             "'torch-mlp'); refit with one of those")
    return last


def grow_head(head: nn.Module, n_classes: int) -> nn.Module:
    """A copy of `head` whose output layer has `n_classes` outputs; old rows keep their weights."""
    grown = copy.deepcopy(head)
    old = output_layer(grown)
    if n_classes == old.out_features:
        return grown
    new = nn.Linear(old.in_features, n_classes)
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
        # new classes start at the old rows' average bias: no class begins with a built-in advantage
        new.bias[old.out_features :] = old.bias.mean()
    grown[-1] = new
    return grown


def fisher_diagonal(head: nn.Module, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information of the head's parameters, labels drawn from its own predictions (true Fisher)."""
    from torch.func import functional_call, grad, vmap

    head = head.eval()
    params = {k: v.detach() for k, v in head.named_parameters()}
    buffers = {k: v.detach() for k, v in head.named_buffers()}
    with torch.no_grad():
        probs = head(features).softmax(-1)
        # one-hot rows: indexing by a batched label is data-dependent, which vmap cannot trace
        sampled = F.one_hot(torch.multinomial(probs, 1).squeeze(1), probs.shape[-1]).to(probs.dtype)

    def log_likelihood(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (functional_call(head, (p, buffers), (x.unsqueeze(0),)).log_softmax(-1)[0] * y).sum()

    per_sample = vmap(grad(log_likelihood), in_dims=(None, 0, 0))(params, features, sampled)
    fisher = {k: g.pow(2).mean(0) for k, g in per_sample.items()}
    # Scaled to mean 1 over all parameters: a head that is confident on its own classes has a Fisher of ~1e-11
    # (measured), which would make any fixed `ewc_weight` meaningless. Only the relative importance is kept.
    scale = torch.cat([f.reshape(-1) for f in fisher.values()]).mean().clamp(min=1e-30)
    return {k: f / scale for k, f in fisher.items()}


def _ewc_penalty(head: nn.Module, anchor: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor]) -> torch.Tensor:
    total = torch.zeros(())
    for name, p in head.named_parameters():
        old = anchor[name]
        current = p[: old.shape[0]] if p.shape != old.shape else p  # grown rows: only the old ones are anchored
        total = total + (fisher[name] * (current - old).pow(2)).sum()
    return total


class _ContinualObjective(nn.Module):
    """The loop's objective: cross-entropy of the grown head, plus LwF's distillation from the old head's outputs
    or EWC's pull towards the old weights."""

    def __init__(self, head: nn.Module, old_head: nn.Module, n_old: int, settings: ContinualSettings,
                 anchor: dict[str, torch.Tensor] | None, fisher: dict[str, torch.Tensor] | None) -> None:
        super().__init__()
        self.head, self.old_head = head, old_head  # the old head's weights do not train (requires_grad False)
        self.n_old, self.settings, self.anchor, self.fisher = n_old, settings, anchor, fisher

    def forward(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        settings, t = self.settings, self.settings.temperature
        logits = self.head(xb)
        loss = F.cross_entropy(logits, yb)
        if settings.method == "lwf":
            with torch.no_grad():
                target = (self.old_head(xb) / t).softmax(-1)
            distill = F.kl_div((logits[:, : self.n_old] / t).log_softmax(-1), target, reduction="batchmean")
            loss = loss + settings.lwf_weight * t * t * distill
        elif settings.method == "ewc":
            device = logits.device
            anchor = {k: v.to(device) for k, v in self.anchor.items()}
            fisher = {k: v.to(device) for k, v in self.fisher.items()}
            loss = loss + settings.ewc_weight / 2 * _ewc_penalty(self.head, anchor, fisher)
        return loss


@keeps_callers_rng  # reseeds torch (and extend() calls it): the caller's own draws must not notice
def train_incremental(
    head: nn.Module,
    n_classes: int,
    features: np.ndarray,
    labels: np.ndarray,
    settings: ContinualSettings,
    memory: Memory | None = None,
    verbose: bool = False,
    checkpointer: Checkpointer | None = None,
) -> nn.Module:
    """Grow `head` to `n_classes` outputs and train it on new features/labels with the chosen method. With a
    `checkpointer`, a checkpoint is written after every epoch, and one it loaded is resumed from its epoch."""
    torch.manual_seed(settings.seed)
    old_head = copy.deepcopy(head).eval()
    for p in old_head.parameters():  # the distillation target and EWC's anchor: never trained
        p.requires_grad_(False)
    n_old = output_layer(old_head).out_features
    new_head = grow_head(head, n_classes)
    x, y = torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long)
    if settings.method == "rehearsal":
        if memory is None or not len(memory):
            raise HeadstartError("rehearsal needs an exemplar buffer: fit with memory=20 (CLI --memory 20), or pass "
                                 "old_data= to extend so one can be built")
        x = torch.cat([x, torch.as_tensor(memory.features)])
        y = torch.cat([y, torch.as_tensor(memory.labels)])
    anchor = fisher = None
    if settings.method == "ewc":
        old_feats = torch.as_tensor(memory.features) if memory is not None and len(memory) else x
        fisher = fisher_diagonal(old_head, old_feats)
        anchor = {k: v.detach().clone() for k, v in old_head.named_parameters()}
    params = [p for p in new_head.parameters()]
    for p in params:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(settings.seed)
    steps_per_epoch = -(-len(x) // settings.batch_size)

    def batches(_epoch: int):
        for idx in torch.randperm(len(x), generator=gen).split(settings.batch_size):
            yield x[idx], y[idx]

    objective = _ContinualObjective(new_head, old_head, n_old, settings, anchor, fisher)
    run_loop(objective, [{"params": params}], batches,
             LoopSettings(f"extend ({settings.method})", settings.epochs, verbose=verbose),
             optimizer=lambda groups: adamw(groups, lr=settings.lr, weight_decay=settings.weight_decay),
             scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
                 opt, T_max=settings.epochs * steps_per_epoch),
             steps_per_epoch=steps_per_epoch, train_mode=new_head.train,
             resumable=None if checkpointer is None else Resumable(checkpointer, gen))
    for p in params:
        p.requires_grad_(False)
    return new_head.cpu().eval()


@torch.no_grad()
def accuracy_on(head: nn.Module, features: np.ndarray, labels: np.ndarray,
                mask: np.ndarray | None = None) -> float | None:
    """Accuracy of `head` (predicting among all its classes) on the rows selected by `mask`; None if none are."""
    if mask is not None:
        features, labels = features[mask], labels[mask]
    if len(labels) == 0:
        return None
    pred = head.eval()(torch.as_tensor(features, dtype=torch.float32)).argmax(-1).numpy()
    return float((pred == labels).mean())


def incremental_report(before: nn.Module, after: nn.Module, features: np.ndarray, labels: np.ndarray, n_old: int,
                       settings: ContinualSettings) -> dict:
    """Old-class and new-class accuracy before and after, and the forgetting (old accuracy lost)."""
    old, new = labels < n_old, labels >= n_old
    old_before = accuracy_on(before, features, labels, old)
    old_after = accuracy_on(after, features, labels, old)
    return {
        "method": settings.method, "settings": settings.to_dict(), "n_eval": int(len(labels)),
        "before": {"old_accuracy": old_before, "new_accuracy": 0.0 if new.any() else None},
        "after": {"old_accuracy": old_after, "new_accuracy": accuracy_on(after, features, labels, new),
                  "accuracy": accuracy_on(after, features, labels)},
        "forgetting": None if old_before is None or old_after is None else old_before - old_after,
    }


# --- the estimator's side: `est.extend(new_data)` -----------------------------------------------------------
def _features(est, items: list) -> tuple[np.ndarray, np.ndarray]:
    feats, ok = embed(est.model_.backbone, items, batch_size=est.batch_size, num_workers=est.num_workers,
                      use_cache=est.use_cache, cache_dir=est.cache_dir, verbose=est.verbose)
    return feats, ok


def _check_extendable(est) -> None:
    est._check_fitted()
    if est._task != "classification":
        raise HeadstartError(f"extend learns new classes: it needs a classifier, not a {est._task} model")
    if getattr(est, "classical_", None) is not None:
        raise HeadstartError(f"extend trains a torch head; this model has the scikit-learn head '{est.head}': refit "
                             "with head='linear' (or 'torch-mlp')")


def remember(est, data) -> Memory | None:
    """The exemplar buffer of a just-fitted classifier (herding over its training features), or None."""
    if not est.memory or est._task != "classification" or getattr(est, "classical_", None) is not None:
        return None
    feats, ok = _features(est, data.items)
    return build_memory(feats[ok], data.targets[ok], est.memory)


def extend_estimator(est, data, settings: ContinualSettings, valid=None, old_data=None, out_dir: str | None = None,
                     resume: str | None = None) -> dict:
    """Add the classes of `data` to a fitted classifier in place; returns the before/after report.

    With `out_dir`, a checkpoint is written under `out_dir/checkpoint/` after every epoch (removed once the head
    is trained); `resume=DIR` continues an interrupted extension from DIR's, with the same bundle, data and
    options, to the same head."""
    _check_extendable(est)
    incoming = est._load(data)
    old_classes = list(est.classes_)
    classes = old_classes + [c for c in incoming.classes if c not in old_classes]
    if valid is None:  # no old-class data to score on: only new-class accuracy can be measured
        tr, va = stratified_split(incoming, est.val_fraction, settings.seed)
        train, val = est._align(incoming.subset(tr), classes), est._align(incoming.subset(va), classes)
    else:
        train, val = est._align(incoming, classes), est._align(est._load(valid), classes)
    memory: Memory | None = getattr(est, "memory_", None)
    if memory is None and old_data is not None:
        old = est._align(est._load(old_data), old_classes)
        old_feats, ok = _features(est, old.items)
        memory = build_memory(old_feats[ok], old.targets[ok], settings.memory_per_class or 20)
    feats, ok = _features(est, train.items)
    feats, targets = feats[ok], train.targets[ok]
    val_feats, val_ok = _features(est, val.items)
    before = est.model_.head
    checkpointer = extend_checkpointer(est, before, classes, None if memory is None else memory.to_tensors(),
                                       settings.to_dict(), (train, val), resume or out_dir, resume)
    after = train_incremental(before, len(classes), feats, targets, settings, memory, verbose=est.verbose,
                              checkpointer=checkpointer)
    if checkpointer is not None:
        checkpointer.remove()  # the head is trained: the caller saves the bundle that holds it
    report = incremental_report(before, after, val_feats[val_ok], val.targets[val_ok], len(old_classes), settings)
    report.update(old_classes=old_classes, new_classes=classes[len(old_classes):], n_train=int(len(targets)),
                  memory_used=int(len(memory)) if memory is not None and settings.method != "finetune" else 0)
    est.model_.head = after
    est.classes_ = classes
    if settings.memory_per_class and (memory is not None or settings.method == "rehearsal"):
        est.memory_ = build_memory(feats, targets, settings.memory_per_class, previous=memory)
    est.continual_ = [*(getattr(est, "continual_", None) or []), report]
    say(est.verbose, describe(report))
    return report


def describe(report: dict) -> str:
    """One line for people: accuracy on old and new classes before and after, and the forgetting."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    b, a = report["before"], report["after"]
    return (f"extend ({report['method']}): old classes {pct(b['old_accuracy'])} -> {pct(a['old_accuracy'])}, "
            f"new classes {pct(b['new_accuracy'])} -> {pct(a['new_accuracy'])}, forgetting {pct(report['forgetting'])}"
            + ("" if b["old_accuracy"] is not None else " (give valid data with old classes to measure forgetting)"))
