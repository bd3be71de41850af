"""Heads: pooled features -> task outputs, with the loss and output activation each task needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import HeadstartError


@dataclass(frozen=True)
class HeadConfig:
    """`linear`, or `torch-mlp` (one hidden layer with GELU); dropout applies to the features first."""

    kind: str = "linear"
    hidden: int = 512
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Standardize(nn.Module):
    """Per-feature (x - mean) / std with statistics of the training features, fixed once set.

    Pooled features differ in scale by orders of magnitude between backbones (unit-norm sentence embeddings vs
    ReLU-pooled CNN maps); standardising makes one head learning rate work for all of them, as scikit-learn users
    get from a StandardScaler in front of LogisticRegression. Identity until `set_statistics` is called.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def set_statistics(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        if len(features) < 2:
            return
        std = features.std(0)
        # A feature (nearly) constant on the few training rows - a ReLU channel that never fired - would be
        # scaled up a millionfold wherever it does vary (validation loss in the hundreds, measured): floor each
        # feature's spread at a tenth of the typical one.
        self.std.copy_(std.clamp(min=max(float(std.median()) * 0.1, 1e-6)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _linear(cfg: HeadConfig, in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(Standardize(in_dim), nn.Dropout(cfg.dropout), nn.Linear(in_dim, out_dim))


def _mlp(cfg: HeadConfig, in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(
        Standardize(in_dim), nn.Dropout(cfg.dropout), nn.Linear(in_dim, cfg.hidden), nn.GELU(),
        nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, out_dim),
    )


# "mlp" names scikit-learn's MLPClassifier among the classical heads (methods/classical.py); the trainable one is
# torch-mlp.
HEADS = {"linear": _linear, "torch-mlp": _mlp}


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
