"""Conformance checks for plugin authors: `check_backbone(backbone)` asserts the backbone contract."""

from __future__ import annotations

import torch

from .backbones import Backbone


def example_inputs(backbone: Backbone, batch: int = 2):
    """A batch the backbone accepts: zero images, or tokenized sample sentences for text encoders."""
    if backbone.spec.modality == "text":
        assert backbone.tokenizer is not None, "a text backbone must carry its tokenizer"
        texts = ["transfer learning reuses what a model already knows", "short"] * batch
        return dict(backbone.tokenizer(texts[:batch], padding=True, return_tensors="pt"))
    size = backbone.spec.preprocess.size
    return torch.zeros(batch, 3, size, size)


def check_backbone(backbone: Backbone, batch: int = 2) -> None:
    """Raise AssertionError where `backbone` breaks the contract strategies and the trainer rely on."""
    assert isinstance(backbone, Backbone), f"{type(backbone).__name__} is not a headstart Backbone"
    backbone.eval()
    with torch.no_grad():
        out = backbone(example_inputs(backbone, batch))
    assert out.shape == (batch, backbone.feature_dim), f"features {tuple(out.shape)} != ({batch}, feature_dim)"
    names = backbone.group_names()
    assert len(names) >= 2, "a backbone needs at least two layer groups to unfreeze gradually"
    assert len(set(names)) == len(names), "layer group names must be unique"
    groups = backbone.layer_groups()
    assert list(groups) == names, "layer_groups() must follow group_names() order"
    owned = [id(p) for ps in groups.values() for p in ps]
    assert len(owned) == len(set(owned)), "a parameter sits in two layer groups"
    assert set(owned) == {id(p) for p in backbone.parameters()}, "some parameters are in no layer group"
    assert all(groups[g] for g in names), "a layer group holds no parameters"
    assert backbone.spec.feature_dim in (None, backbone.feature_dim), "spec.feature_dim disagrees with the model"
