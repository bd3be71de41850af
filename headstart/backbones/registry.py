"""The registry of backbones by name (`register_backbone`, `list_backbones`): below the builders, which name the
offline ones in their errors, and below `backbones/__init__.py`, which registers the built-in specs."""

from __future__ import annotations

from .base import BackboneSpec

_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry (plugins call this); names are unique."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"backbone '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones(modality: str | None = None) -> list[BackboneSpec]:
    return [s for s in _REGISTRY.values() if modality is None or s.modality == modality]
