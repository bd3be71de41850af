"""A detector as an ONNX graph, its parity check, and running it on onnxruntime.

The graph takes one tile, float32 [3, H, W] pixels in [0, 1] (any H and W: the tile size and smaller edge tiles),
and holds everything torchvision's FCOS does with it: resize, normalisation, backbone, pyramid, head, box decoding,
the score threshold, per-class NMS and the detection cap. It returns `boxes` [N, 4] (x1, y1, x2, y2 in the tile's
pixels), `scores` [N] and `labels` [N] (class indices; the names are in the file's metadata). Cutting an image
into tiles and merging their boxes stay outside, as resizing does for classifiers.

ONNX goes through the TorchScript-based exporter (`dynamo=False`, opset 17, as for classifiers): torchvision's
detection models are written to trace for ONNX (opset >= 11), and the dynamo exporter needs `onnxscript`, which
is not installed here. The traced graph keeps the tile's height and width dynamic (on timm's test_efficientnet,
48x64 and 64x40 tiles gave torch's boxes). Measured against torch: EfficientNet-Lite0 at 400 px, 15 tiles of the
deepforest images, 1,500 detections: boxes within 9e-5 px (median 4e-6), scores within 3e-7; test_efficientnet at
64 px: boxes within 3e-5 px, scores within 4e-7.

The parity check: on every checked tile, each detection of one runtime must have a partner in the other with the
same label, every box coordinate within BOX_TOL pixels and the score within SCORE_TOL. Order is not compared (two
near-equal scores may swap), and a detection within SCORE_TOL of the score threshold, or of the lowest score
kept when the cap is reached, may be missing from the other side: rounding decides on which side of a cut it
falls. The check runs on a graph exported with the score threshold at 0 as well (export_detector's docstring).
The tolerances are over 100 times the differences measured above; a graph computing something else moves
boxes and scores by far more: with the red channel's mean at 0.5 instead of ImageNet's 0.485 in the graph (Lite0,
400 px, a deepforest tile), 96 of the model's 100 detections found no match.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torchvision.transforms.functional import pil_to_tensor

from ..errors import HeadstartError
from ..scoring import onnx_session, write_onnx_metadata
from .data import Labelled, image_size, load_image, windows
from .model import DetectorModel
from .predictions import image_paths

if TYPE_CHECKING:
    from .estimator import ObjectDetector

OPSET = 17
OUTPUTS = ("boxes", "scores", "labels")
BOX_TOL = 0.01  # pixels, for every coordinate of a matched box
SCORE_TOL = 1e-4  # a detection's score (torchvision FCOS: sqrt(class probability x centre-ness))
CHECK_LIMIT = 16  # tiles in the parity check


class TileGraph(nn.Module):
    """The detector on one tile, as the graph exports it: [3, H, W] in [0, 1] -> boxes, scores, labels."""

    def __init__(self, model: DetectorModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.model.detect([image])[0]
        return found["boxes"], found["scores"], found["labels"]


def check_tiles(det: ObjectDetector, check_inputs: Sequence[str] | None) -> list[torch.Tensor]:
    """uint8 tiles for the parity check: the tiles `predict` would cut from the given images (files or folders),
    at most CHECK_LIMIT; without inputs, synthetic tiles (noise with bright and dark rectangles, a fixed seed) at
    the tile size and one smaller, which proves the graph did not freeze the traced size."""
    if check_inputs:
        tiles = []
        for path in image_paths(check_inputs):
            width, height = image_size(path)
            tiles += [pil_to_tensor(load_image(Labelled(path, width, height, window=w)))
                      for w in windows(width, height, det.tile_size)]
            if len(tiles) >= CHECK_LIMIT:
                break
        if not tiles:
            raise HeadstartError("none of the parity-check inputs is a readable image; pass image files with --check")
        return tiles[:CHECK_LIMIT]
    generator = torch.Generator().manual_seed(0)
    tiles = []
    for size in (det.tile_size, det.tile_size, max(det.tile_size * 3 // 4, 8)):
        pixels = torch.randint(90, 130, (3, size, size), generator=generator, dtype=torch.uint8)
        for value in (240, 10):
            x, y = (int(v) for v in torch.randint(0, size // 2, (2,), generator=generator))
            pixels[:, y:y + size // 3, x:x + size // 3] = value
        tiles.append(pixels)
    return tiles


def _unmatched(a: dict[str, np.ndarray], b: dict[str, np.ndarray], floor: float) -> tuple[int, float]:
    """How many detections of `a` scored above `floor` + SCORE_TOL find no partner in `b` (same label, box and
    score within tolerance; the closest such), and the largest box or score difference over the pairs found.
    Each detection of `b` partners at most one."""
    used = np.zeros(len(b["scores"]), bool)
    missing, worst = 0, 0.0
    for box, score, label in zip(a["boxes"], a["scores"], a["labels"]):
        if score <= floor + SCORE_TOL:
            continue
        apart = np.maximum(np.abs(b["boxes"] - box).max(1, initial=0), np.abs(b["scores"] - score))
        near = ~used & (b["labels"] == label) & (np.abs(b["scores"] - score) <= SCORE_TOL) & (
            np.abs(b["boxes"] - box).max(1, initial=0) <= BOX_TOL)
        if near.any():
            k = int(np.flatnonzero(near)[np.argmin(apart[near])])
            used[k], worst = True, max(worst, float(apart[k]))
        else:
            missing += 1
    return missing, worst


def parity_failure(want: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]], threshold: float,
                   cap: int) -> str | None:
    """Why the exported detections `got` are not the model's `want` (one dict per tile), or None when they agree."""
    return _parity(want, got, threshold, cap)[0]


def _parity(want: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]], threshold: float,
            cap: int) -> tuple[str | None, float]:
    """(parity_failure's answer, the largest box or score difference over the matched detections)."""
    worst = 0.0
    for i, (w, g) in enumerate(zip(want, got)):
        # at the cap, the lowest score kept is a cut like the threshold: what sits at it may fall either side
        floors = [threshold] + [float(d["scores"].min()) for d in (w, g) if len(d["scores"]) >= cap]
        floor = max(floors)
        (lost, apart), (extra, _) = _unmatched(w, g, floor), _unmatched(g, w, floor)
        worst = max(worst, apart)
        if lost or extra:
            return (f"on tile {i}, {lost} of the model's {len(w['scores'])} detections have no match in the graph's "
                    f"{len(g['scores'])} and {extra} of the graph's none in the model's (a match: the same label, "
                    f"box within {BOX_TOL} px, score within {SCORE_TOL})"), worst
    return None, worst


def _as_numpy(found: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: found[k].detach().cpu().numpy().astype(np.float64 if k != "labels" else np.int64) for k in OUTPUTS}


def export_detector(det: ObjectDetector, path: str, check_inputs: Sequence[str] | None = None,
                    digest: str | None = None) -> dict:
    """Write `det`'s tile graph to `path` (written whole, then renamed) once it passes the parity check on the
    check tiles; returns {"path", "format", "max_abs_diff", "tolerance", "n_checked", "detections_checked"} as
    export_model does, the difference being the largest over matched boxes' coordinates (pixels) and scores.

    A trained detector may find nothing on the check tiles at its score threshold, and a check over no detections
    proves nothing about the weights. So the same graph is also exported with the threshold at 0 (one constant
    differs; every tile then gives the cap's 100 detections) and checked the same way, then discarded.
    """
    model = det.model_.to("cpu").eval()
    fcos = model._fcos[0]
    tiles = [t.float().div(255.0) for t in check_tiles(det, check_inputs)]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".export-{os.getpid()}-{os.path.basename(path)}.tmp")
    threshold, worst, checked = fcos.score_thresh, 0.0, 0
    try:
        for cut in ([0.0] if threshold > 0 else []) + [threshold]:  # the graph to ship last: it stays in `tmp`
            fcos.score_thresh = cut
            _write_graph(TileGraph(model).eval(), tiles[0], tmp)
            runtime = OnnxDetector(tmp)
            with torch.no_grad():
                want = [_as_numpy(model.detect([t])[0]) for t in tiles]
            got = [_as_numpy(runtime.detect([t])[0]) for t in tiles]
            why, diff = _parity(want, got, cut, fcos.detections_per_img)
            if why:
                raise HeadstartError(f"{path}: the exported graph is not the model: {why} (score threshold {cut}); "
                                     "not written")
            worst, checked = max(worst, diff), checked + int(sum(len(w["scores"]) for w in want))
        _annotate(tmp, det, digest)
        os.replace(tmp, path)
    finally:
        fcos.score_thresh = threshold
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"path": path, "format": "onnx", "max_abs_diff": worst, "tolerance": max(BOX_TOL, SCORE_TOL),
            "n_checked": len(tiles), "detections_checked": checked}


def _write_graph(graph: TileGraph, example: torch.Tensor, path: str) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on torchvision's size arithmetic: sizes stay dynamic
        torch.onnx.export(graph, (example,), path, input_names=["image"], output_names=list(OUTPUTS),
                          dynamic_axes={"image": {1: "height", 2: "width"}, **{k: {0: "detections"} for k in OUTPUTS}},
                          opset_version=OPSET, dynamo=False)


def _annotate(path: str, det: ObjectDetector, digest: str | None) -> None:
    """Labels, task and tiling inside the ONNX file: it is deployable without the bundle."""
    write_onnx_metadata(path, {
        "headstart.labels": json.dumps(det.classes_), "headstart.task": "detection", "headstart.modality": "image",
        "headstart.backbone": json.dumps(det.spec_.to_dict()), "headstart.tile_size": str(det.tile_size),
        "headstart.outputs": "boxes [N,4] x1,y1,x2,y2 in the tile's pixels; scores [N]; labels [N] class indices"},
        digest)


class OnnxDetector:
    """An onnxruntime session over an exported detector: what ObjectDetector.runtime_ holds for runtime="onnx"."""

    def __init__(self, path: str, threads: int | None = None) -> None:
        self.session = onnx_session(path, threads)
        self.path = path

    def detect(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """As DetectorModel.detect: per [3, H, W] float tile in [0, 1], its boxes, scores and labels."""
        out = []
        for image in images:  # the graph takes one tile: tiles of one image may differ in size at its edges
            boxes, scores, labels = self.session.run(list(OUTPUTS), {"image": image.cpu().numpy().astype(np.float32)})
            out.append({"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores),
                        "labels": torch.from_numpy(labels)})
        return out
