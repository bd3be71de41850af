"""How a backbone's parameters fall into named layer groups, input to output (the contract in base.py): for timm
models by their stages, for torchvision models by their top-level children, for transformers by their layers. The
builders (vision.py, text.py) hand the grouping to `Backbone`; strategies then say which groups train.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

GroupRule = tuple[str, Callable[[str], "str | None"]]


def rule_grouper(rules: list[GroupRule], fallback: str = "final") -> Callable[[str], str]:
    """Assign a parameter name to the first rule that claims it; unclaimed names go to `fallback`."""

    def group_of(name: str) -> str:
        for _, rule in rules:
            g = rule(name)
            if g is not None:
                return g
        return fallback

    return group_of


def timm_grouping(model: nn.Module) -> tuple[Callable[[str], str], list[str]]:
    """Layer groups from a timm model's own `group_matcher(coarse=True)`: stem, one group per stage, final.

    timm folds the final layers (e.g. EfficientNet's head conv) into the last stage; we keep them apart
    because they are the most task-specific layers and the first a strategy unfreezes.
    """
    matcher = model.group_matcher(coarse=True)
    stem = matcher.get("stem")
    stem_patterns = [stem] if isinstance(stem, str) else list(stem or [])
    blocks = matcher.get("blocks", [])
    if isinstance(blocks, str):
        blocks = [(blocks, None)]
    order_keys: dict[str, tuple] = {}

    def group_of(name: str) -> str:
        for pat in stem_patterns:
            if re.match(pat, name):
                return "stem"
        for pat, suffix in blocks:
            m = re.match(pat, name)
            if m:
                if suffix is not None and suffix[0] >= 99999:
                    return "final"
                idx = tuple(int(g) for g in m.groups() if g is not None)
                g = "stage" + ".".join(str(i) for i in idx) if idx else "blocks"
                order_keys[g] = idx
                return g
        return "final"

    names = [group_of(n) for n, _ in model.named_parameters()]
    stages = sorted({g for g in names if g.startswith("stage")}, key=lambda g: order_keys[g])
    order = ["stem"] + stages + (["blocks"] if "blocks" in names else []) + ["final"]
    return group_of, order


def child_grouping(model: nn.Module) -> tuple[Callable[[str], str], list[str]]:
    """Layer groups from named children, in definition order, splitting a child that holds most parameters.

    Used for torchvision models, whose `features`-style containers hold the whole network.
    """
    total = sum(p.numel() for p in model.parameters()) or 1
    order: list[str] = []
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        if n == 0:
            continue
        grand = [(f"{name}.{c}", gc) for c, gc in child.named_children() if any(True for _ in gc.parameters())]
        if n > total / 2 and len(grand) > 1:
            order.extend(g for g, _ in grand)
        else:
            order.append(name)
    prefixes = sorted(order, key=len, reverse=True)

    def group_of(param: str) -> str:
        for p in prefixes:
            if param == p or param.startswith(p + "."):
                return p
        return "final"

    if "final" not in order:
        order.append("final")
    return group_of, order


_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|block|blocks)\.(\d+)\.")


def transformer_grouping(model: nn.Module) -> tuple[Callable[[str], str], list[str]]:
    """Layer groups for transformer encoders: embeddings, layer.0 .. layer.N-1, final (norms, pooler)."""
    seen_layer = False
    groups: dict[str, str] = {}
    indices: set[int] = set()
    for name, _ in model.named_parameters():
        m = _LAYER_INDEX.search(name)
        if m:
            seen_layer = True
            indices.add(int(m.group(1)))
            groups[name] = f"layer.{int(m.group(1))}"
        elif "relative_attention_bias" in name:
            # MPNet's position bias sits after its layers but feeds every layer's attention: it is position
            # information, like the embeddings, and training it would change frozen early layers.
            groups[name] = "embeddings"
        else:
            groups[name] = "final" if seen_layer else "embeddings"
    order = ["embeddings"] + [f"layer.{i}" for i in sorted(indices)] + ["final"]
    return (lambda n: groups.get(n, "final")), order
