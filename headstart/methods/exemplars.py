"""The exemplar buffer of continual learning: a few training examples per class, kept as backbone features with
their class indices (`Memory`), chosen by herding (iCaRL) so that they stay representative of the whole class.

A fitted classifier keeps one in its bundle (`memory.*` tensors) when fit with `memory=`; continual.py trains on it
(rehearsal) or measures the Fisher information on it (EWC), and grows it with each class `extend` adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Memory:
    """The exemplar buffer: backbone features and class indices of a few training examples per class."""

    features: np.ndarray  # (n, feature_dim) float32
    labels: np.ndarray  # (n,) int64

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"memory.features": torch.as_tensor(self.features, dtype=torch.float32),
                "memory.labels": torch.as_tensor(self.labels, dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, state: dict[str, torch.Tensor]) -> Memory | None:
        if "memory.features" not in state:
            return None
        return cls(state["memory.features"].numpy().astype(np.float32), state["memory.labels"].numpy().astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)


def herding(features: np.ndarray, k: int) -> np.ndarray:
    """Indices of `k` rows whose running mean tracks the class mean most closely (iCaRL, Rebuffi et al. 2017).

    Herding keeps a buffer representative of the whole class, not just its densest part, which is what a
    nearest-mean or rehearsal method needs from a handful of exemplars.
    """
    k = min(k, len(features))
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    mu = x.mean(0)
    chosen: list[int] = []
    running = np.zeros_like(mu)
    available = np.ones(len(x), dtype=bool)
    for step in range(1, k + 1):
        gaps = np.linalg.norm(mu[None, :] - (running[None, :] + x) / step, axis=1)
        gaps[~available] = np.inf
        best = int(np.argmin(gaps))
        chosen.append(best)
        available[best] = False
        running += x[best]
    return np.array(chosen, dtype=np.int64)


def build_memory(features: np.ndarray, labels: np.ndarray, per_class: int, previous: Memory | None = None) -> Memory:
    """Herding exemplars for each class present in `labels`; classes only in `previous` keep their exemplars."""
    feats, labs = [], []
    present = set(np.unique(labels).tolist())
    if previous is not None:
        keep = ~np.isin(previous.labels, list(present))
        feats.append(previous.features[keep])
        labs.append(previous.labels[keep])
    for c in sorted(present):
        rows = np.flatnonzero(labels == c)
        pick = rows[herding(features[rows], per_class)]
        feats.append(features[pick])
        labs.append(labels[pick])
    return Memory(np.concatenate(feats).astype(np.float32), np.concatenate(labs).astype(np.int64))
