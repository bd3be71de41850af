"""`headstart serve` on a detector bundle: boxes per image, under the classifier server's limits, token, in-flight
bound and error handling (tests/test_serve.py holds the same checks for classifiers)."""

import io
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TINY
from detection_data import make_box_images
from fastapi.testclient import TestClient
from PIL import Image
from test_serve import LIMITS, LoopbackServer, _files, _limiter, _png

import headstart as hs
from headstart.deploy.serve import INTERNAL_ERROR, create_app

TILE = 64


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A tiny detector, fitted briefly and loaded from its bundle as `headstart serve` loads it; a score threshold
    of 0 so that even a barely trained model answers with boxes (up to 100 per tile) to compare."""
    root = tmp_path_factory.mktemp("serve_det")
    data = make_box_images(str(root / "train"), 6)
    hs.ObjectDetector(backbone=TINY, pretrained=False, strategy="full", tile_size=TILE, epochs=1, lr=3e-3,
                      fpn_channels=32, score_threshold=0.0, verbose=False, out_dir=str(root / "run")).fit(data)
    det = hs.load(str(root / "run" / "model.hs"))
    big = root / "big.png"  # larger than a tile: served as predict serves it, by overlapping tiles merged
    Image.open(root / "train" / "img0.png").resize((100, 80)).save(big)
    return det, [str(root / "train" / "img1.png"), str(big)]


def test_detector_server_answers_the_boxes_predict_finds(detector):
    det, paths = detector
    with LoopbackServer(create_app(det, LIMITS, "model.hs")) as client:
        meta = client.get("/metadata").json()
        assert meta["task"] == "detection" and meta["labels"] == ["bar", "square"] and meta["tile_size"] == TILE
        assert "map_50" in meta["metrics"]["validation"]
        schema = client.get("/openapi.json").json()
        assert "Detections" in schema["components"]["schemas"]
        resp = client.post("/predict", files=[("files", (Path(p).name, Path(p).read_bytes(), "image/png"))
                                              for p in paths])
        assert resp.status_code == 200, resp.text
        got = resp.json()["predictions"]
    want = det.predict(paths)
    assert len(got) == 2
    for g, w in zip(got, want):
        assert len(g["boxes"]) == len(w["boxes"]) > 0
        assert [b["label"] for b in g["boxes"]] == w["labels"]
        assert all(abs(a - b) <= 0.005 for b_g, b_w in zip(g["boxes"], w["boxes"])
                   for a, b in zip(b_g["box"], b_w)), "boxes [xmin, ymin, xmax, ymax] in the image's pixels"
        assert [b["score"] for b in g["boxes"]] == pytest.approx(w["scores"], abs=1e-5)
    # the large image's boxes lie in its own pixels, beyond the first tile
    assert max(b["box"][2] for b in got[1]["boxes"]) > TILE


def _big_png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (90, 90, 90)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case, status", [("corrupt", 400), ("too_many", 413), ("too_many_pixels", 413),
                                          ("request_pixels", 413), ("too_big_body", 413), ("not_multipart", 415)])
def test_detector_bad_requests_get_the_classifier_server_answers(detector, case, status):
    det, _ = detector
    good = _png((200, 40, 40))
    image = _big_png(200)  # 40,000 pixels: under max_pixels (90,000); three of them exceed the request's 100,000
    requests = {
        "corrupt": {"files": [("files", ("x.png", b"\x89PNG garbage", "image/png"))]},
        "too_many": {"files": _files(*[good] * 5)},
        "too_many_pixels": {"files": _files(_big_png(400))},
        "request_pixels": {"files": _files(image, image, image)},
        "too_big_body": {"files": _files(good + b"\0" * 250_000)},
        "not_multipart": {"json": {"files": ["a"]}},
    }
    with TestClient(create_app(det, LIMITS)) as client:
        resp = client.post("/predict", **requests[case])
        assert resp.status_code == status, resp.text
        assert isinstance(resp.json()["error"], str) and resp.json()["error"]
        after = client.post("/predict", files=_files(good))
        assert after.status_code == 200 and after.json()["predictions"][0]["boxes"], "still serving, with boxes"


def test_detector_server_needs_its_token_and_bounds_requests_in_flight(detector):
    det, _ = detector
    app = create_app(det, replace(LIMITS, max_in_flight=1), token="s3cret")
    slots = _limiter(app).slots
    good = {"Authorization": "Bearer s3cret"}
    with TestClient(app) as client:
        assert client.post("/predict", files=_files(_png((200, 40, 40)))).status_code == 401
        assert client.get("/health").status_code == 200
        assert slots.acquire(blocking=False)
        try:
            busy = client.post("/predict", files=_files(_png((200, 40, 40))), headers=good)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
        finally:
            slots.release()
        assert client.post("/predict", files=_files(_png((200, 40, 40))), headers=good).status_code == 200


def test_detector_internal_errors_answer_a_generic_500_and_go_to_the_log(detector, monkeypatch, caplog):
    det, _ = detector
    secret = "secret detail from /srv/models/detector.py"

    def fail(*_):
        raise RuntimeError(secret)

    monkeypatch.setattr(type(det), "detect_image", fail)
    with TestClient(create_app(det, LIMITS), raise_server_exceptions=False) as client, caplog.at_level("ERROR"):
        resp = client.post("/predict", files=_files(_png((200, 40, 40))))
        assert resp.status_code == 500 and resp.json() == {"error": INTERNAL_ERROR}, resp.text
        assert secret not in resp.text
    assert any(record.exc_info and secret in str(record.exc_info[1]) for record in caplog.records)


def test_cli_serve_loads_a_detector_bundle(detector, tmp_path, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from headstart.cli import app

    det, paths = detector
    bundle = det.save(str(tmp_path / "det.hs"))
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **kwargs: started.update(app=asgi))
    result = CliRunner().invoke(app, ["serve", bundle])
    assert result.exit_code == 0, result.output
    with TestClient(started["app"]) as client:
        resp = client.post("/predict", files=_files(Path(paths[0]).read_bytes()))
        assert resp.status_code == 200 and len(resp.json()["predictions"][0]["boxes"]) == len(
            det.predict(paths[0])[0]["boxes"])
