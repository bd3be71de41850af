"""Heads: pooled features -> task outputs, with the loss and output activation each task needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import HeadstartError


@dataclass(frozen=True)
class HeadConfig:
    """`linear`, or `mlp` (one hidden layer with GELU); dropout applies to the features first."""

    kind: str = "linear"
    hidden: int = 512
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _linear(cfg: HeadConfig, in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(in_dim, out_dim))


def _mlp(cfg: HeadConfig, in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Dropout(cfg.dropout), nn.Linear(in_dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
        nn.Linear(cfg.hidden, out_dim),
    )


HEADS = {"linear": _linear, "mlp": _mlp}


def build_head(cfg: HeadConfig, in_dim: int, out_dim: int) -> nn.Module:
    if cfg.kind not in HEADS:
        raise HeadstartError(f"unknown head '{cfg.kind}': choose one of {', '.join(HEADS)}")
    return HEADS[cfg.kind](cfg, in_dim, out_dim)


def loss_for(task: str) -> nn.Module:
    """Cross-entropy for classes, per-label BCE for multi-label, MSE on standardised targets for regression."""
    return {"classification": nn.CrossEntropyLoss(), "multilabel": nn.BCEWithLogitsLoss(),
            "regression": nn.MSELoss()}[task]


def outputs_to_scores(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities, per-label probabilities, or the (standardised) regression value."""
    if task == "classification":
        return logits.softmax(dim=-1)
    if task == "multilabel":
        return logits.sigmoid()
    return logits


class TransferModel(nn.Module):
    """A backbone with its top removed and a new head on its pooled features."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
