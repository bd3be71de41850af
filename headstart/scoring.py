"""The fitted model's scoring pipeline as one torch module: what `predict` runs on torch (batch_scorer.BatchScorer)
and what `export` writes to ONNX or TorchScript (deploy/export.py), so the two compute the same thing.

For images it holds the normalisation, the backbone and the head, from float32 NCHW pixels in [0, 1] at the
backbone's size (resize and centre crop stay outside: they depend on each image's size); for texts the encoder,
its pooling and the head, from `input_ids` and `attention_mask` (the tokenizer stays outside). The output is what
`predict_proba` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import HeadstartError
from .heads import outputs_to_scores

if TYPE_CHECKING:
    from .estimator import TransferEstimator


class ImageGraph(nn.Module):
    """[0, 1] pixels -> normalise -> backbone -> head -> scores: the deployable image pipeline."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], task: str | None) -> None:
        super().__init__()
        self.model, self.task = model, task
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model((pixels - self.mean) / self.std)
        return out if self.task is None else outputs_to_scores(self.task, out)


class TextGraph(nn.Module):
    """Token ids and mask -> encoder -> pooling -> head -> scores: the deployable text pipeline."""

    def __init__(self, model: nn.Module, task: str | None) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model({"input_ids": input_ids, "attention_mask": attention_mask})
        return out if self.task is None else outputs_to_scores(self.task, out)


def scoring_graph(est: TransferEstimator, features_for_classical: bool = False) -> nn.Module:
    """The fitted estimator's whole in-graph pipeline as one module.

    A scikit-learn head cannot live in the graph: export refuses it, while local prediction
    (`features_for_classical`) gets the graph up to the features and applies the head after it.
    """
    task: str | None = est._task
    if getattr(est, "classical_", None) is not None:
        if not features_for_classical:
            raise HeadstartError(f"this bundle's head is a scikit-learn model ({est.head}), which cannot go into "
                                 "an ONNX or TorchScript graph; refit with --head linear or torch-mlp to export")
        task = None  # the model's head is an Identity: the graph returns the features
    if est.modality == "image":
        pre = est.spec_.preprocess
        return ImageGraph(est.model_, pre.mean, pre.std, task).eval()
    if est.modality == "text":
        return TextGraph(est.model_, task).eval()
    raise HeadstartError(f"cannot export {est.modality} models; known: image, text")


def onnx_session(path: str, threads: int | None = None):
    """An onnxruntime CPU session on `path`, for classifiers' and detectors' graphs alike."""
    try:
        import onnxruntime as ort  # optional: only the ONNX runtime path needs it
    except ImportError:
        raise HeadstartError("onnxruntime is not installed: pip install onnxruntime") from None
    options = ort.SessionOptions()
    # The same thread count as torch (OMP_NUM_THREADS / torch.set_num_threads): one knob for both runtimes.
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # warnings about unused initialisers are noise for a user
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def write_onnx_metadata(path: str, meta: dict[str, str], digest: str | None) -> None:
    """`meta` (and the source bundle's digest) into the ONNX file's metadata: it is deployable without the bundle."""
    import onnx  # optional: only export needs it

    model = onnx.load(path)
    if digest:  # which bundle this graph came from: hs.load(bundle, runtime="onnx") reuses a matching export
        meta = {**meta, "headstart.bundle_digest": digest}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
