"""`load` (`hs.load`): a saved bundle, rebuilt by restore.py, ready to predict on torch or, with
runtime="onnx", through onnxruntime on its exported graph (`attach_onnx_runtime`).

Here in deploy/, above both restore.py and export.py: attaching a runtime may export the graph first, and the core
(restore, the estimator) never imports deployment; the estimator predicts through the runtime attached to it.
"""

from __future__ import annotations

import os

from .._runtime import cache_root
from ..detection import ObjectDetector
from ..detection.onnx import OnnxDetector
from ..errors import HeadstartError
from ..estimator import TransferEstimator
from ..methods.multitask import MultiTaskModel
from ..restore import load_bundle
from .export import export_model
from .onnx_runtime import OnnxScorer, bundle_digest, exported_from


def load(path: str, runtime: str = "torch") -> TransferEstimator | MultiTaskModel | ObjectDetector:
    """A saved bundle, ready to predict. Reads only JSON and safetensors; refuses newer bundle formats.

    runtime="onnx" predicts through onnxruntime on the exported graph (exported once per bundle, then cached).
    """
    if runtime not in ("torch", "onnx"):
        raise HeadstartError(f"unknown runtime '{runtime}': choose torch or onnx")
    est = load_bundle(path)
    if runtime == "onnx" and not isinstance(est, MultiTaskModel):
        attach_onnx_runtime(est, path)
    return est


def attach_onnx_runtime(est: TransferEstimator | ObjectDetector, bundle_path: str, verbose: bool = False) -> str:
    """Make `est` predict through onnxruntime; returns the graph's path.

    Uses `headstart export`'s file beside the bundle (BUNDLE.onnx) when it was exported from this very bundle,
    else exports once per bundle content into the cache (the parity check runs then too).
    """
    digest = bundle_digest(bundle_path)
    sibling = os.path.splitext(bundle_path)[0] + ".onnx"
    path = os.path.join(cache_root(), "onnx", f"{digest}.onnx")
    if os.path.isfile(sibling) and exported_from(sibling) == digest:
        path = sibling
    elif not os.path.exists(path):
        export_model(est, path, "onnx", verbose=verbose, bundle=bundle_path)
    est.runtime_ = OnnxDetector(path) if isinstance(est, ObjectDetector) else OnnxScorer(path)
    return path
