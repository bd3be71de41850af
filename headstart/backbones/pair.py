"""Two text backbones side by side: the inputs of a blend (race.py, blend.py) of a transferred model and the
no-transfer one.

A blend of two linear heads - one on a pretrained encoder's features, one on TF-IDF - is itself one linear head on
the two feature vectors put end to end (its weights are the two heads' weights, each scaled by its share). So the
blend ships as an ordinary model: this backbone, whose features are the first part's followed by the second's,
and a linear head. Each text goes through both tokenizers; the second part's inputs travel in the same batch
under SECOND (a prefix), so every text path (training batches, prediction, the server) feeds it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import BackboneSpec

SECOND = "second."  # batch keys of the second part's inputs


class PairTokenizer:
    """Both parts' tokenizers on the same texts, as one batch (the second's keys prefixed with SECOND)."""

    def __init__(self, first, second) -> None:
        self.first, self.second = first, second

    def __call__(self, texts: Sequence[str], padding: bool = True, truncation: bool = True,
                 max_length: int | None = None, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        ours = dict(self.first(list(texts), padding=padding, truncation=truncation, max_length=max_length,
                               return_tensors=return_tensors))
        theirs = self.second(list(texts), padding=padding, truncation=truncation, max_length=max_length,
                             return_tensors=return_tensors)
        return {**ours, **{SECOND + k: v for k, v in dict(theirs).items()}}


class PairBody(nn.Module):
    """Features of the first backbone, then of the second, end to end."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ours = {k: v for k, v in batch.items() if not k.startswith(SECOND)}
        theirs = {k.removeprefix(SECOND): v for k, v in batch.items() if k.startswith(SECOND)}
        return torch.cat([self.first(ours), self.second(theirs).to(torch.float32)], dim=-1)


def pair_spec(first: BackboneSpec, second: BackboneSpec) -> BackboneSpec:
    """The spec of `first` and `second` side by side: each part's own spec inside, the first's preprocessing."""
    return BackboneSpec(name=f"{first.name}+{second.name}", source="pair", arch="pair", modality=first.modality,
                        preprocess=first.preprocess, feature_dim=(first.feature_dim or 0) + (second.feature_dim or 0),
                        description=f"{first.name} and {second.description.removeprefix('no transfer: ')}, "
                                    "features end to end",
                        options={"parts": [first.to_dict(), second.to_dict()]})


def part_specs(spec: BackboneSpec) -> list[BackboneSpec]:
    return [BackboneSpec.from_dict(part) for part in spec.options["parts"]]
