"""`BatchScorer`: inputs -> scores for a fitted estimator, the one prediction path shared by `headstart predict`
(predict_stream.py), the HTTP server (serve.py) and ONNX parity checks (export.py): prepare one input (decode +
resize, or validate a text), collate a batch, run it on torch or on an attached onnxruntime session.

Kept apart from the streaming pipeline so that the server and the exporter, which score lists they already hold, use
it without the lazy readers and the resumable writer; `default_check_inputs` gives a parity check its inputs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from ..data import fashion_mnist
from ..data.images import _INTERP
from ..data.texts import _has_undecodable
from ..errors import HeadstartError
from ..methods.classical import predict_proba_full
from ..scoring import scoring_graph

if TYPE_CHECKING:
    from ..estimator import TransferEstimator

SAMPLE_TEXTS = [  # parity checks for text models when the user gives none: ordinary sentences of mixed length
    "The delivery arrived two days late and the box was damaged.",
    "I love this phone, the battery lasts all day!",
    "Meeting moved to Thursday at 3pm, please update your calendars.",
    "What a game last night",
    "The new policy takes effect next month and applies to every employee in the company, including contractors.",
    "ok",
]


class BatchScorer:
    """Inputs -> scores for a fitted estimator, on its torch model or on an attached onnxruntime session."""

    def __init__(self, est: TransferEstimator, device: str | None = None) -> None:
        self.est, self.modality = est, est.modality
        self.onnx = getattr(est, "runtime_", None)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.graph = None
        if self.onnx is None:
            self.graph = scoring_graph(est, features_for_classical=True).to(self.device)
        if self.modality == "image":
            pre = est.spec_.preprocess
            # The graph normalises; outside it only what depends on each image's size: resize and crop.
            self.transform = T.Compose([T.Resize(pre.resize, interpolation=_INTERP[pre.interpolation], antialias=True),
                                        T.CenterCrop(pre.size), T.ToImage(), T.ToDtype(torch.float32, scale=True)])
        else:
            self.tokenizer = est.model_.backbone.tokenizer
            self.max_length = est.spec_.preprocess.max_length

    def prepare(self, item):
        """One input ready to batch (a [0, 1] tensor, or the text), or None when it cannot be used."""
        if self.modality == "text":
            usable = isinstance(item, str) and item.strip() and not _has_undecodable(item)
            return item if usable else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                if isinstance(item, Image.Image):  # convert() copies even an RGB image: a full-size copy saved
                    return self.transform(item if item.mode == "RGB" else item.convert("RGB"))
                if not os.path.isfile(item):  # a pipe or device named like an image: opening it may never return
                    return None
                with Image.open(item) as img:
                    return self.transform(img.convert("RGB"))
        except Exception:  # PIL raises many types; each means "not an image we can read"
            return None

    def collate(self, prepared: list) -> dict:
        if self.modality == "image":
            return {"pixels": torch.stack(prepared)}
        enc = self.tokenizer(prepared, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def run(self, batch: dict) -> np.ndarray:
        """Scores (what predict_proba returns) for a collated batch."""
        if self.onnx is not None:
            return self.onnx.run(batch).astype(np.float64)
        with torch.inference_mode():
            out = self.graph(*(v.to(self.device) for v in batch.values())).float().cpu().numpy()
        if getattr(self.est, "classical_", None) is not None:
            return predict_proba_full(self.est.classical_, out, len(self.est.classes_)).astype(np.float64)
        return out.astype(np.float64)

    def score(self, items: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ok) for a small list: rows of unusable inputs are NaN with ok False."""
        return self.score_prepared([self.prepare(x) for x in items])

    def score_prepared(self, prepared: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """`score` for inputs `prepare` has already made ready (None: unusable)."""
        ok = np.array([p is not None for p in prepared], dtype=bool)
        scores = np.full((len(prepared), self.n_outputs), np.nan)
        if ok.any():
            scores[ok] = self.run(self.collate([p for p in prepared if p is not None]))
        return scores, ok

    @property
    def n_outputs(self) -> int:
        return 1 if self.est._task == "regression" else len(self.est.classes_)


def default_check_inputs(est: TransferEstimator) -> list:
    """Real inputs for a parity check when the user names none: Fashion-MNIST test images, or sample texts."""
    if est.modality == "text":
        return list(SAMPLE_TEXTS)

    if not fashion_mnist.available():
        raise HeadstartError("no images to check the export on: pass some with --check (files or a folder)")
    x, _ = fashion_mnist.load_split("test")
    return [Image.fromarray(x[i]) for i in range(8)]
