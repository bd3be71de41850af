"""The Hugging Face Trainer's recipe for a text encoder, as `quality="best"` races it against SetFit's tuning.

`finetune_encoder`: a fresh linear head on the encoder's pooled embedding, cross-entropy, every encoder weight at
one rate (the estimator's lr times advisor.TEXT_FINETUNE's scale: 5e-5 at the default, the Trainer's own) and the
head at the estimator's lr, batches of 8, the estimator's epochs (3, the Trainer's default), the rate decaying
linearly to 0 with no warm-up and AdamW without weight decay (the Trainer's defaults). This is the plan `auto`
runs as `full` from 256 texts per class (docs/decisions.md, "Texts fine-tune at the Hugging Face Trainer's
recipe"), here through the methods' loop so that it tunes an encoder the way `contrastive_tune` does.

The head is then dropped: the shipped head is solved on the tuned embeddings, as after SetFit's tuning, so the two
candidates differ only in how the encoder was tuned, and budget.check scores both the same way. Why race them:
at 64 texts per class the Trainer scored 0.669 on tweets against 0.603 for SetFit's tuning, and 0.771 on election
tweets against 0.890 (bench/results/time_budget.json at d31d642): neither wins on every data set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .._runtime import adamw
from ..advisor import TEXT_FINETUNE
from ..errors import HeadstartError
from ..loop import LoopSettings, Resumable, run_loop


class _Classify(nn.Module):
    """The loop's objective: cross-entropy of a fresh linear head on the encoder's embedding."""

    def __init__(self, backbone: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(backbone.feature_dim, n_classes)

    def forward(self, encoded: dict, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.head(self.backbone(encoded)), labels)


def tune_text_encoder(backbone: nn.Module, texts: Sequence[str], targets: torch.Tensor, objective: nn.Module,
                      groups: list[dict], rows_of: Callable[[int], Iterable[np.ndarray]], *, stage: str,
                      settings: LoopSettings, optimizer: Callable, steps_per_epoch: int,
                      scheduler: Callable | None = None, log: Callable[[dict], None] | None = None,
                      resumable: Resumable | None = None) -> list[dict]:
    """What both text tunings share (this recipe and fewshot.contrastive_tune): every encoder weight trains through
    the methods' loop on `objective(tokenised texts, targets[rows])` for the rows `rows_of(epoch)` yields, and is
    left frozen and in eval mode. Returns one record per pass (`stage`, mean loss), each also given to `log` as its
    pass ends (metrics.jsonl). With `resumable`, a checkpoint is written after every pass, and a loaded one is
    resumed (its passes' records logged again: metrics.jsonl starts afresh with every run)."""
    if getattr(backbone, "tokenizer", None) is None:
        raise HeadstartError(f"tuning on texts ({stage}) needs a text backbone; '{backbone.spec.name}' has no "
                             "tokenizer")
    max_length = backbone.spec.preprocess.max_length

    def batches(epoch: int):
        for rows in rows_of(epoch):
            enc = backbone.tokenizer([texts[r] for r in rows], padding=True, truncation=True, max_length=max_length,
                                     return_tensors="pt")
            yield dict(enc), targets[rows]

    def record(r: dict) -> dict:
        done = {"stage": stage, "epoch": r["epoch"], "train_loss": float(np.mean(r["loss"] or [np.nan])),
                "texts": len(texts)}
        return {**done, "stopped": "time limit"} if r.get("stopped") else done

    saved = resumable.checkpointer.resume_for(resumable.stage) if resumable is not None else None
    for r in saved.stage_history if saved is not None and log is not None else []:
        log(record(r))
    for p in backbone.parameters():
        p.requires_grad_(True)
    result = run_loop(objective, groups, batches, settings, optimizer=optimizer, scheduler=scheduler,
                      steps_per_epoch=steps_per_epoch, on_epoch=None if log is None else lambda r: log(record(r)),
                      resumable=resumable)
    for p in backbone.parameters():
        p.requires_grad_(False)
    backbone.eval()
    return [record(r) for r in result.epochs]


def finetune_encoder(backbone: nn.Module, texts: Sequence[str], labels: np.ndarray, *, epochs: int = 3,
                     lr: float = 1e-3, batch_size: int = TEXT_FINETUNE["finetune_batch_size"], seed: int = 0,
                     n_classes: int | None = None,
                     verbose: bool = True, deadline: float | None = None,
                     log: Callable[[dict], None] | None = None, mixed_precision: str = "no") -> list[dict]:
    """Fine-tune a text encoder with the Trainer's recipe (module docstring) on `texts` and their class indices:
    `epochs` passes in shuffled batches. Returns one record per pass (mean loss), each also given to `log` as its
    pass ends. No batch starts after `deadline` (a time.perf_counter() value). Same contract as
    methods.fewshot.contrastive_tune: the encoder is left tuned, frozen and in eval mode."""
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    objective = _Classify(backbone, n_classes or int(targets.max()) + 1)
    with torch.random.fork_rng():  # the fresh head's initial weights, seeded, leaving the global stream as it was
        torch.manual_seed(seed)
        objective.head.reset_parameters()
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(texts) // batch_size)
    total = max(1, epochs * steps_per_epoch)

    def rows_of(_epoch: int):
        order = rng.permutation(len(texts))
        return (order[start : start + batch_size] for start in range(0, len(order), batch_size))

    groups = [{"params": list(backbone.parameters()), "lr": lr * TEXT_FINETUNE["backbone_lr_scale"]},
              {"params": list(objective.head.parameters()), "lr": lr}]
    return tune_text_encoder(
        backbone, texts, targets, objective, groups, rows_of, stage="finetune",
        settings=LoopSettings("fine-tune", epochs, mixed_precision=mixed_precision, verbose=verbose, deadline=deadline),
        optimizer=lambda g: adamw(g, weight_decay=0.0), steps_per_epoch=steps_per_epoch,
        scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / total), log=log)
