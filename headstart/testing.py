"""Conformance checks for plugin authors: `check_backbone(backbone)` asserts the backbone contract."""

from __future__ import annotations

import torch

from .backbones import Backbone


def check_backbone(backbone: Backbone, batch: int = 2) -> None:
    """Raise AssertionError where `backbone` breaks the contract strategies and the trainer rely on."""
    assert isinstance(backbone, Backbone), f"{type(backbone).__name__} is not a headstart Backbone"
    size = backbone.spec.preprocess.size
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(batch, 3, size, size))
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
