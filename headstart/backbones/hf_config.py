"""A transformers model built from the config.json a bundle carries, only once the config is seen to describe
the weights the bundle holds.

The config is data from the bundle, and it sizes everything: `hidden_size: 1000000` or `vocab_size: 10**9` makes
`from_config` allocate (and randomly initialise) gigabytes before `load_state_dict` could compare a single shape,
`num_hidden_layers: 10**6` builds a million modules, and `num_labels: 10**9` makes the config itself build a
billion-entry label dict. So, before transformers reads it, counts that build one object each are bounded by the
weights (a layer or an expert holds at least one tensor; a backbone's labels are capped), then the model is built on
the meta device (shapes only, no memory) and every parameter and stored buffer must have the shape of the bundle's
tensor of the same name, and buffers never stored (caches rebuilt at start-up) may not outgrow the stored weights.
Only then is the model built for real, no larger than the weights already read. Each refusal is one BundleError;
the loader adds the bundle's path.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import BundleError

CONFIG_FILE = "config.json"  # a transformers model's config, as save_pretrained names it
MODEL_PREFIX = "body.model."  # where the transformers model sits in a Backbone's state (text and image alike)
# A backbone's own classifier labels are unused by headstart, but a config builds its id2label dict from them:
# ImageNet-21k checkpoints carry 21,843; no real one carries more.
MAX_CONFIG_LABELS = 1 << 16
_COUNT_KEY = re.compile(r"(layers?|experts)$")  # num_hidden_layers, n_layer, encoder_layers, num_local_experts


def model_from_config(folder: str, weights: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """`AutoModel.from_config` on the config.json in `folder`; with `weights` (the Backbone's saved state, keys
    under MODEL_PREFIX), only once the config is seen to describe them (module docstring)."""
    from transformers import AutoConfig, AutoModel  # heavy: imported where a transformers model is built

    stored = None
    if weights is not None:
        stored = {k[len(MODEL_PREFIX):]: tuple(v.shape) for k, v in weights.items() if k.startswith(MODEL_PREFIX)}
        path = os.path.join(folder, CONFIG_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                _check_counts(json.load(f), len(stored))
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if stored is not None:
        with torch.device("meta"):  # shapes without storage: nothing is allocated or initialised
            meta = AutoModel.from_config(config)
        _check_shapes(meta, stored)
    return AutoModel.from_config(config)


def _refuse(detail: str) -> BundleError:
    return BundleError(f"the backbone's {CONFIG_FILE} does not describe the weights the bundle holds ({detail}); "
                       "refusing to build it: the bundle is damaged or crafted, re-save the model with headstart")


def _check_counts(config: object, n_tensors: int) -> None:
    """Counts that make transformers build one object each, bounded before it reads them (nested configs too)."""
    if not isinstance(config, dict):
        return
    for key, value in config.items():
        if isinstance(value, dict):
            _check_counts(value, n_tensors)
        elif type(value) is int and _COUNT_KEY.search(key) and value > n_tensors:
            raise _refuse(f"{key} {value:,} for {n_tensors:,} stored tensors")
        elif type(value) is int and key == "num_labels" and value > MAX_CONFIG_LABELS:
            raise _refuse(f"num_labels {value:,}, over headstart's limit of {MAX_CONFIG_LABELS:,}")


def _check_shapes(meta: nn.Module, stored: dict[str, tuple[int, ...]]) -> None:
    kept = meta.state_dict()  # parameters and the buffers a checkpoint stores
    for name, tensor in kept.items():
        if name not in stored:
            raise _refuse(f"{name} {tuple(tensor.shape)} is not among its tensors")
        if tuple(tensor.shape) != stored[name]:
            raise _refuse(f"{name}: the config makes it {tuple(tensor.shape)}, the weights {stored[name]}")
    rebuilt = sum(b.numel() for name, b in meta.named_buffers() if name not in kept)
    if rebuilt > (total := sum(math.prod(shape) for shape in stored.values())):
        raise _refuse(f"{rebuilt:,} values of buffers rebuilt at start-up for {total:,} stored")

