"""A detector's ONNX export (detection/onnx.py): the graph on onnxruntime finds the boxes the torch model finds,
the parity check refuses a graph that does not, and hs.load(..., runtime="onnx") predicts through it."""

import os

import numpy as np
import onnx
import pytest
from conftest import TINY
from detection_data import make_box_images
from fastapi.testclient import TestClient
from PIL import Image

import headstart as hs
from headstart.deploy.serve import create_app
from headstart.detection import onnx as detection_onnx
from headstart.detection.onnx import BOX_TOL, SCORE_TOL, parity_failure


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny detector, briefly fitted, with a score threshold of 0 so that every tile gives detections up to the
    cap of 100 (the cap's cut is checked too); and a large image that `predict` tiles."""
    root = tmp_path_factory.mktemp("det_export")
    data = make_box_images(str(root / "train"), 6)
    hs.ObjectDetector(backbone=TINY, pretrained=False, strategy="full", tile_size=64, epochs=1, lr=3e-3,
                      fpn_channels=32, score_threshold=0.0, verbose=False, out_dir=str(root / "run")).fit(data)
    Image.open(root / "train" / "img0.png").resize((100, 80)).save(root / "big.png")
    return str(root / "run" / "model.hs"), root


def test_export_writes_a_graph_that_finds_the_model_s_boxes(bundle, tmp_path):
    path, root = bundle
    det = hs.load(path)
    result = hs.export_model(det, str(tmp_path / "det.onnx"), check_inputs=[str(root / "train")], verbose=False,
                             bundle=path)
    assert result["n_checked"] == 6 and result["detections_checked"] == 600  # 6 tiles, the cap of 100 each
    assert result["max_abs_diff"] < 1e-3  # measured: about 3e-5 (boxes, px), 4e-7 (scores)
    meta = {p.key: p.value for p in onnx.load(result["path"]).metadata_props}
    assert meta["headstart.labels"] == '["bar", "square"]' and meta["headstart.task"] == "detection"
    assert meta["headstart.tile_size"] == "64" and meta["headstart.bundle_digest"]
    # without --check: synthetic tiles, one of them smaller than the traced size
    assert hs.export_model(det, str(tmp_path / "default.onnx"), verbose=False)["n_checked"] == 3


def test_load_with_the_onnx_runtime_predicts_the_same_boxes_on_a_tiled_image(bundle):
    path, root = bundle
    image = str(root / "big.png")
    on_torch = hs.load(path).predict(image)[0]
    on_onnx_model = hs.load(path, runtime="onnx")
    assert isinstance(on_onnx_model.runtime_, detection_onnx.OnnxDetector)
    on_onnx = on_onnx_model.predict(image)[0]
    assert len(on_onnx["boxes"]) == len(on_torch["boxes"]) > 100, "tiles merged: more than one tile's cap"
    assert on_onnx["labels"] == on_torch["labels"]
    np.testing.assert_allclose(on_onnx["boxes"], on_torch["boxes"], atol=BOX_TOL)
    np.testing.assert_allclose(on_onnx["scores"], on_torch["scores"], atol=SCORE_TOL)
    with TestClient(create_app(on_onnx_model)) as client:  # `headstart serve --runtime onnx`
        assert client.get("/metadata").json()["runtime"] == "onnx"
        served = client.post("/predict", files=[("files", ("big.png", (root / "big.png").read_bytes(), "image/png"))])
        assert [b["label"] for b in served.json()["predictions"][0]["boxes"]] == on_onnx["labels"]


def _found(boxes, scores, labels) -> dict:
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
            "labels": np.asarray(labels)}


def test_parity_matches_detections_in_any_order_and_allows_only_the_cuts_to_differ():
    a = _found([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 4, 4]], [0.9, 0.5, 0.05003], [0, 1, 0])
    swapped = _found(a["boxes"][[1, 0, 2]], a["scores"][[1, 0, 2]], a["labels"][[1, 0, 2]])
    assert parity_failure([a], [swapped], 0.05, 100) is None
    at_threshold = _found(a["boxes"][:2], a["scores"][:2], a["labels"][:2])  # within SCORE_TOL of 0.05: may go
    assert parity_failure([a], [at_threshold], 0.05, 100) is None
    lost = _found(a["boxes"][1:], a["scores"][1:], a["labels"][1:])
    assert "1 of the model's 3 detections have no match" in parity_failure([a], [lost], 0.05, 100)
    moved = _found(a["boxes"] + [[0, 0, 0, 0.5], [0, 0, 0, 0], [0, 0, 0, 0]], a["scores"], a["labels"])
    assert parity_failure([a], [moved], 0.05, 100) is not None
    relabelled = _found(a["boxes"], a["scores"], [1, 1, 0])
    assert parity_failure([a], [relabelled], 0.05, 100) is not None
    rescored = _found(a["boxes"], a["scores"] + [0, 3 * SCORE_TOL, 0], a["labels"])
    assert parity_failure([a], [rescored], 0.05, 100) is not None
    extra = _found([*a["boxes"], [30, 30, 40, 40]], [*a["scores"], 0.7], [*a["labels"], 1])
    assert "1 of the graph's none in the model's" in parity_failure([a], [extra], 0.05, 100)
    # at the cap (3 here), the lowest score kept is a cut too: a graph keeping another detection there agrees
    other_last = _found([*a["boxes"][:2], [30, 30, 40, 40]], [0.9, 0.5, 0.05004], [0, 1, 1])
    assert parity_failure([a], [other_last], 0.05, 3) is None
    assert parity_failure([a], [other_last], 0.0, 100) is not None


def test_a_graph_that_moves_scores_is_refused_and_not_written(bundle, tmp_path, monkeypatch):
    path, _ = bundle
    det = hs.load(path)
    real = detection_onnx.OnnxDetector.detect

    def off(self, images):  # what a graph with, say, another normalisation does: scores move by 1e-3
        return [{**d, "scores": d["scores"] + 1e-3} for d in real(self, images)]

    monkeypatch.setattr(detection_onnx.OnnxDetector, "detect", off)
    target = tmp_path / "bad.onnx"
    with pytest.raises(hs.HeadstartError, match="the exported graph is not the model: on tile 0"):
        hs.export_model(det, str(target), verbose=False)
    assert os.listdir(tmp_path) == [], "neither the file nor its temporary remains"


def test_cli_exports_a_detector_and_refuses_torchscript_in_one_line(bundle, tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    path, root = bundle
    out = str(tmp_path / "cli.onnx")
    result = CliRunner().invoke(app, ["export", path, "--out", out, "--check", str(root / "big.png")])
    assert result.exit_code == 0 and os.path.isfile(out), result.output
    assert "every one of 400 detections on 4 tiles matched" in result.output  # big.png: 4 tiles at threshold 0
    with pytest.raises(hs.HeadstartError, match="a detector exports to onnx only, not torchscript") as err:
        hs.export_model(hs.load(path), str(tmp_path / "x.pt"), "torchscript", verbose=False)
    assert "\n" not in str(err.value)


def test_a_detector_that_finds_nothing_is_still_checked_on_detections_and_keeps_its_threshold(bundle, tmp_path):
    import torch

    path, root = bundle
    det = hs.load(path)
    det.model_._fcos[0].score_thresh = 0.999  # a detector sure of nothing on these tiles
    result = hs.export_model(det, str(tmp_path / "strict.onnx"), check_inputs=[str(root / "big.png")],
                             verbose=False)
    # checked on the threshold-0 graph's detections (4 tiles, the cap's 100 each), though the shipped graph finds none
    assert result["detections_checked"] == 400
    tile = torch.rand(3, 64, 64)
    assert len(det.model_.detect([tile])[0]["scores"]) == 0
    assert len(detection_onnx.OnnxDetector(result["path"]).detect([tile])[0]["scores"]) == 0
    assert det.model_._fcos[0].score_thresh == 0.999, "the model keeps its threshold after the check"
