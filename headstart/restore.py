"""Rebuilding a bundle: `load_bundle` reads it (JSON and safetensors only) and rebuilds the fitted estimator,
architecture from the spec and the backbone files the bundle carries, weights from the bundle, fitted attributes from
the JSON. Nothing is downloaded: a bundle loads on a machine with no network, hub cache or model package.

`hs.load` (deploy/loading.py) calls it, then attaches onnxruntime where asked: the core never imports deployment."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ._version import __version__
from .advisor import Advice
from .backbones import BackboneSpec, rebuild_backbone
from .bundle import read_bundle_files, unbuildable
from .detection import ObjectDetector
from .errors import BackboneUnavailable, BundleError, HeadstartError
from .estimator import TransferEstimator, estimator_class
from .heads import HeadConfig, TransferModel, build_head
from .methods.classical import from_tensors, resaved
from .methods.exemplars import Memory
from .methods.fewshot import PrototypeHead
from .methods.multitask import MultiTaskModel


def load_bundle(path: str) -> TransferEstimator | MultiTaskModel | ObjectDetector:
    """A saved bundle, ready to predict on torch. Reads only JSON and safetensors; refuses newer bundle formats."""
    config, state, files = read_bundle_files(path)
    if config["task"] == "pretrain":
        raise HeadstartError(f"{path}: a pre-trained backbone (headstart pretrain), not a model with a head; "
                             f"train one on it with `headstart fit DATA --backbone {path}`")
    try:
        if config["task"] == "detection":
            est = ObjectDetector._from_bundle(config, state, files)
        elif config["task"] == "multitask":
            return MultiTaskModel._from_bundle(config, state, files)
        else:
            est = restore_estimator(estimator_class(config["modality"], config["task"]), config, state, files)
    except BackboneUnavailable as err:  # an older bundle whose backbone files are nowhere on this machine
        raise BackboneUnavailable(f"{path}: {err}") from None
    except BundleError as err:  # refused while rebuilding (a classical head's types, a backbone config's sizes),
        raise BundleError(f"{path}: {err}") from None  # where the bundle's path is not known
    except HeadstartError as err:  # an edited config naming what this headstart does not know (a head kind...)
        raise BundleError(f"{path}: {err}; the bundle is damaged or was edited: re-save it") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OSError) as err:
        # a crafted or hand-edited config (OSError: transformers on a backbone config.json it cannot read): one line
        raise unbuildable(path, err) from None
    return est


def restore_estimator(cls: type, config: dict, state: dict[str, torch.Tensor], files: dict[str, bytes] | None = None):
    """An instance of `cls` (an estimator class) fitted as the bundle records, ready to predict. `files`: the
    backbone's own files the bundle carries (bundle.read_bundle_files)."""
    params = {k: v for k, v in config.get("params", {}).items() if k in inspect.signature(cls).parameters}
    est = cls(**params)
    spec = BackboneSpec.from_dict(config["backbone"])
    # the architecture only, checked against the weights that come from the bundle before it is built
    weights = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    backbone = rebuild_backbone(spec, files or {}, weights)
    head_cfg = config["head"]
    est.classical_ = None
    est.memory_, est.continual_ = Memory.from_tensors(state), config.get("continual")  # continual learning's buffer
    state = {k: v for k, v in state.items() if not k.startswith("memory.")}
    if head_cfg["kind"] == "classical":
        classical_state = {k: v for k, v in state.items() if k.startswith("classical.")}
        est.classical_ = from_tensors(head_cfg, classical_state)
        est._classical_saved = resaved(head_cfg, classical_state, est.classical_)
        state = {k: v for k, v in state.items() if not k.startswith("classical.")}
        head = nn.Identity()
    elif head_cfg["kind"] == "prototype":  # fewshot: prototypes are buffers, loaded with the rest of the state
        head = PrototypeHead(backbone.feature_dim, head_cfg["out_dim"])
    else:
        head = build_head(HeadConfig(kind=head_cfg["kind"], hidden=head_cfg.get("hidden", 512)),
                          backbone.feature_dim, head_cfg["out_dim"])
    model = TransferModel(backbone, head)
    model.load_state_dict(state, strict=True)
    est.model_, est.spec_ = model.eval(), spec
    est.classes_ = list(config["labels"])
    est.backbone_trained_ = bool(config["backbone_trained"])
    est.strategy_, est.metrics_ = config.get("strategy"), config.get("metrics", {})
    est.data_summary_ = config.get("data", {})
    est.advice_ = None
    if config.get("advisor"):
        est.advice_ = Advice(**config["advisor"])
    if config.get("target_scaling"):
        est.target_scaling_ = config["target_scaling"]
    est.thresholds_ = config.get("thresholds")  # multi-label decision thresholds; None: 0.5 for every label
    est.headstart_version_ = config.get("headstart_version", __version__)
    return est
