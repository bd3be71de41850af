"""Exporting a bundle to ONNX or TorchScript, checked for parity with the torch model. (Running a graph on
onnxruntime: onnx_runtime.py; a bundle loaded onto it: loading.py.)

The graph holds everything that can live in it: for images the normalisation, the backbone and the head, from
float32 NCHW pixels in [0, 1] at the backbone's size (resize and centre crop stay outside: they depend on each
image's size); for texts the encoder, its pooling and the head, from `input_ids` and `attention_mask` (the
tokenizer stays outside). The output is what `predict_proba` returns: class or per-label probabilities, or the
standardised regression value.

ONNX goes through the TorchScript-based exporter (`dynamo=False`). torch 2.14 defaults to the dynamo exporter,
which needs the extra `onnxscript` package (and its own operator translations); the TorchScript exporter needs
only torch and onnx, takes a dynamic batch (and token) axis, and exports both packaged backbones.

The parity check: what a user needs from the graph. On every checked input (1) the same decision: the same top
class (where the model's top two probabilities are within the tolerance the input is a tie and either counts),
for multi-label the same labels on at the bundle's thresholds; and (2) every score (probability, or the
regression value in units of the target's standard deviation) within a tolerance derived for this model from
float32 arithmetic through the whole graph:
- The two runtimes run the same backbone with different kernels and summation orders, so the features differ by
  rounding. Measured here (onnxruntime vs torch, rms difference over rms feature): EfficientNet-Lite0 2.4e-6 at
  64 px and 2.1e-6 at 224 px (3.6e-6 on the worst single input), MiniLM-L6 0.7e-6, timm's test_efficientnet 1.1e-6.
  FEATURE_RTOL = 1e-4 budgets about 30x the worst of these (some 1,700 float32 units of rounding).
- The head turns feature error into score error by its own sensitivity, which varies 10x and more between heads
  (a weakly regularised head on standardised features, large C, amplifies most), so no one fixed tolerance on
  probabilities is both safe for every head and tight for the rest. The tolerance is the largest score change
  when the checked inputs' features get random noise of the budgeted size, propagated through the head in
  float64 (parity_tolerance). That noise model is checked against the real differences: at the measured error
  size, over the probe's C from 0.003 to 100 and both its scalings on Lite0 features (64 and 224 px, 38 inputs),
  the differences onnxruntime gave were 0.46-1.10 times the modelled ones for logits, 0.36-2.05 for
  probabilities; at the budget the tolerance came to 3e-5 - 8e-4, 21-132 times the real difference.
- Floored at SCORE_FLOOR (rounding in the softmax itself), capped at SCORE_CAP (a graph whose probabilities move
  by a percentage point is not the same model, whatever the head's sensitivity).
A graph that computes something else moves scores far more than rounding does and is refused
(tests/test_export_parity.py): on a head whose tolerance came to 1.7e-5, 1% noise on the head's weights moved
probabilities by 2.5e-4, a normalisation mean off by 0.015 (TF's 0.5 for ImageNet's 0.485) by 1.8e-2. Lite0
`features` models on 400 Fashion-MNIST images (64 and 224 px, the probe's C forced from 0.003 to 100) exported
with probabilities within 7e-6 of torch and the same top class on every input.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..detection import ObjectDetector
from ..detection.onnx import export_detector
from ..errors import HeadstartError
from ..heads import outputs_to_scores
from ..progress import say
from ..scoring import scoring_graph, write_onnx_metadata
from .batch_scorer import BatchScorer, default_check_inputs
from .onnx_runtime import OnnxScorer, bundle_digest
from .predict_inputs import iter_inputs

if TYPE_CHECKING:
    from ..estimator import TransferEstimator

FORMATS = ("onnx", "torchscript")
FEATURE_RTOL = 1e-4  # float32 error budget of the features, relative to their rms (see the module docstring)
SCORE_FLOOR = 1e-6  # a few float32 units of a probability near 1: rounding in the softmax / sigmoid itself
SCORE_CAP = 1e-2  # however sensitive the head, a probability a point off is another model's
NOISE_DRAWS = 4  # noise draws per tolerance: the maximum over draws and inputs, so a lucky draw cannot make it tight
OPSET = 17
CHECK_LIMIT = 32  # parity-check inputs: enough to cover every class of a small problem, quick to run twice


def parity_tolerance(head: nn.Module, features: torch.Tensor, task: str, rtol: float = FEATURE_RTOL) -> float:
    """The largest score change float32 rounding of the backbone can cause through `head` on these `features`.

    Each feature gets Gaussian noise of standard deviation rtol * (|f_j| + rms of its row) (the measured
    rounding error grows with the feature, and a term on the row's scale keeps small features from being
    taken as exact); the head runs in float64 so that its own rounding does not blur the measurement.
    """
    import copy

    head64 = copy.deepcopy(head).double().eval()
    f = features.detach().double()
    scale = f.abs() + f.pow(2).mean(1, keepdim=True).sqrt()
    generator = torch.Generator().manual_seed(0)  # the same tolerance for the same model, every run
    moved = 0.0
    with torch.no_grad():
        base = outputs_to_scores(task, head64(f))
        for _ in range(NOISE_DRAWS):
            noise = torch.randn(f.shape, generator=generator, dtype=torch.float64)
            moved = max(moved, float((outputs_to_scores(task, head64(f + rtol * scale * noise)) - base).abs().max()))
    return min(max(moved, SCORE_FLOOR), SCORE_CAP)


def parity_failure(want: np.ndarray, got: np.ndarray, tolerance: float, task: str,
                   thresholds: Sequence[float] | None = None) -> str | None:
    """Why the exported scores `got` are not the model's `want` (rows: inputs), or None when they agree: a
    different decision on some input, or a score off by more than `tolerance`."""
    if task == "classification" and want.shape[1] > 1:
        top_two = np.sort(want, axis=1)[:, -2:]
        tie = top_two[:, 1] - top_two[:, 0] <= tolerance  # a genuine tie: either class is the model's answer
        flipped = np.flatnonzero((want.argmax(1) != got.argmax(1)) & ~tie)
        if len(flipped):
            i = int(flipped[0])
            return (f"it predicts class {int(got[i].argmax())} where the model predicts {int(want[i].argmax())} "
                    f"on {len(flipped)} input(s) (the first: input {i}, model probability {want[i].max():.4f})")
    elif task == "multilabel":
        cut = np.asarray(thresholds if thresholds else [0.5] * want.shape[1])
        near = np.abs(want - cut) <= tolerance
        flipped = np.flatnonzero((((want >= cut) != (got >= cut)) & ~near).any(1))
        if len(flipped):
            return f"it switches labels on or off on {len(flipped)} input(s) (the first: input {int(flipped[0])})"
    diff = float(np.abs(got - want).max())
    if not diff <= tolerance:  # NaN fails too
        return f"its scores differ from the model's by up to {diff:.2e} (tolerance {tolerance:.2e})"
    return None


def input_names(modality: str) -> list[str]:
    return ["pixels"] if modality == "image" else ["input_ids", "attention_mask"]


def _inputs(batch: dict, modality: str) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(batch[n]) for n in input_names(modality))


def export_model(est: TransferEstimator | ObjectDetector, path: str, fmt: str = "onnx",
                 check_inputs: Sequence | None = None, verbose: bool = True, bundle: str | None = None) -> dict:
    """Write `est`'s graph to `path` and check it against the torch model on real inputs (`check_inputs`:
    files, folders, tables or texts; the first CHECK_LIMIT are used).

    Returns {"path", "format", "max_abs_diff", "tolerance", "n_checked"}; raises HeadstartError where the graph
    decides differently on some input or a score moves by more than float32 rounding explains (see the module
    docstring; the file is removed then: a graph that predicts differently is not an export). A detector exports
    its tile graph with its own parity check (detection/onnx.py).
    """
    if fmt not in FORMATS:
        raise HeadstartError(f"unknown export format '{fmt}': choose one of {', '.join(FORMATS)}")
    if isinstance(est, ObjectDetector):  # its own graph (one tile in, boxes out) and parity check: detection/onnx.py
        if fmt != "onnx":
            raise HeadstartError(f"{bundle or 'this detector'}: a detector exports to onnx only, not {fmt}")
        result = export_detector(est, path, check_inputs, bundle_digest(bundle) if bundle else None)
        say(verbose, f"parity on {result['n_checked']} tiles ({result['detections_checked']} detections): every "
            f"detection matched, max |difference| = {result['max_abs_diff']:.2e} (boxes within 0.01 px, scores "
            "within 1e-4)")
        return result
    if est.spec_.source == "pair":  # two tokenizers feed one graph: the runtime's single text input cannot
        raise HeadstartError(f"{bundle or 'this model'}: a blend of two models ({est.spec_.description}) cannot be "
                             "exported: its inputs come from two tokenizers; refit with --strategy features (or "
                             "baseline) to export, or serve the bundle with `headstart serve`")
    scorer = BatchScorer(est, device="cpu")  # export traces on the CPU, whatever predicting used before
    graph = scoring_graph(est)
    items = (list(islice(iter_inputs(est.modality, check_inputs), CHECK_LIMIT)) if check_inputs
             else default_check_inputs(est))
    prepared = [p for p in (scorer.prepare(x) for x in items) if p is not None]
    if not prepared:
        raise HeadstartError("none of the parity-check inputs could be read; pass readable files with --check")
    example = _inputs(scorer.collate(prepared), est.modality)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".tmp", dir=folder)
    os.close(fd)
    # Checked on the traced batch and on its last input alone: another batch size (and, for texts, another
    # padded length) proves the dynamic axes were not frozen at trace time.
    checks = [example, _inputs(scorer.collate(prepared[-1:]), est.modality)]
    want, tolerance = _model_scores(est, graph, checks)
    try:
        if fmt == "onnx":
            _export_onnx(graph, example, est, tmp, bundle_digest(bundle) if bundle else None)
            session = OnnxScorer(tmp)

            def run(*x: torch.Tensor) -> np.ndarray:
                return session.run(dict(zip(input_names(est.modality), x)))
        else:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit is deprecated, but still the way to ship a C++ graph
                traced = torch.jit.trace(graph, example, check_trace=False)
                torch.jit.save(traced, tmp)
                loaded = torch.jit.load(tmp)

            def run(*x: torch.Tensor) -> np.ndarray:
                return loaded(*x).numpy()
        with torch.no_grad():
            got = [run(*x).astype(np.float64) for x in checks]
        thresholds = getattr(est, "thresholds_", None)
        for w, g in zip(want, got):
            why = parity_failure(w, g, tolerance, est._task, thresholds)
            if why:
                raise HeadstartError(f"{path}: the exported graph is not the model: {why}, on {len(prepared)} "
                                     "checked inputs; not written")
        diff = max(float(np.abs(g - w).max()) for w, g in zip(want, got))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    say(verbose, f"parity on {len(prepared)} real inputs: the same decision on each; max |score difference| = "
        f"{diff:.2e} (tolerance {tolerance:.2e}, float32 rounding through this model)")
    return {"path": path, "format": fmt, "max_abs_diff": diff, "tolerance": tolerance, "n_checked": len(prepared)}


def _model_scores(est: TransferEstimator, graph: nn.Module,
                  checks: list[tuple[torch.Tensor, ...]]) -> tuple[list[np.ndarray], float]:
    """The torch model's scores on each check batch, and the parity tolerance from the features its head saw."""
    features: list[torch.Tensor] = []
    hook = est.model_.head.register_forward_hook(lambda _module, args, _out: features.append(args[0].detach()))
    try:
        with torch.no_grad():
            want = [graph(*x).numpy().astype(np.float64) for x in checks]
    finally:
        hook.remove()
    return want, parity_tolerance(est.model_.head, torch.cat(features), est._task)


def _export_onnx(graph: nn.Module, example: tuple[torch.Tensor, ...], est, path: str, digest: str | None) -> None:
    names = input_names(est.modality)
    axes = {n: {0: "batch"} for n in names}
    if est.modality == "text":
        axes = {n: {0: "batch", 1: "tokens"} for n in names}
    axes["scores"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic in SAME padding: sizes are fixed
        torch.onnx.export(graph, example, path, input_names=names, output_names=["scores"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    _annotate(path, est, digest)


def _annotate(path: str, est, digest: str | None) -> None:
    """Labels, task and preprocessing inside the ONNX file: it is deployable without the bundle."""
    import json

    meta = {"headstart.labels": json.dumps(est.classes_), "headstart.task": est._task,
            "headstart.modality": est.modality, "headstart.backbone": json.dumps(est.spec_.to_dict())}
    if getattr(est, "target_scaling_", None):
        meta["headstart.target_scaling"] = json.dumps(est.target_scaling_)
    if getattr(est, "thresholds_", None):  # multi-label decisions: label j is on where score_j >= thresholds[j]
        meta["headstart.thresholds"] = json.dumps(est.thresholds_)
    write_onnx_metadata(path, meta, digest)
