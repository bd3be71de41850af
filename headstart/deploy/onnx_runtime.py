"""Running an exported graph on onnxruntime (`OnnxScorer`: numpy batches in, scores out), and knowing which bundle a
graph came from (`bundle_digest`, the digest `export` writes into the file and `exported_from` reads back).

Apart from export.py, which checks a graph through `OnnxScorer` before writing it, and from loading.py, which
attaches one to a loaded estimator (exporting first where no matching graph exists).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..scoring import onnx_session
from .predict_stream import score_items

if TYPE_CHECKING:
    from ..estimator import TransferEstimator


class OnnxScorer:
    """An onnxruntime session over an exported graph: numpy batches in, scores out."""

    def __init__(self, path: str, threads: int | None = None) -> None:
        self.session = onnx_session(path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.path = path

    def run(self, batch: dict) -> np.ndarray:
        feed = {}
        for name in self.inputs:
            value = batch[name]
            value = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            feed[name] = value.astype(np.int64 if name != "pixels" else np.float32, copy=False)
        return self.session.run(["scores"], feed)[0]

    def score_items(self, est: TransferEstimator, items: Sequence, verbose: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ok) of `items` for `est` through this graph: how an estimator loaded with runtime="onnx"
        predicts (it asks the runtime attached to it, loading.attach_onnx_runtime)."""
        return score_items(est, items, verbose)


def bundle_digest(path: str) -> str:
    h = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            with open(os.path.join(path, name), "rb") as f:
                h.update(name.encode() + f.read())
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:24]


def exported_from(path: str) -> str | None:
    """The digest of the bundle an ONNX file was exported from (its metadata), or None."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # not an ONNX file we can read: simply not a match
        return None
    return {p.key: p.value for p in model.metadata_props}.get("headstart.bundle_digest")

