"""The HTTP server on loopback, with real requests: good ones, bad ones, and the server still up after them."""

import io
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import COLOURS, TINY, tiny_colour_bundle
from PIL import Image

import headstart as hs
from headstart.deploy import serve as serve_module
from headstart.deploy.serve import INTERNAL_ERROR, ServeLimits, create_app
from headstart.deploy.serve_guard import InFlightLimit

LIMITS = ServeLimits(max_request_bytes=200_000, max_batch=4, max_pixels=300 * 300, max_text_chars=200,
                     max_request_pixels=100_000)


class LoopbackServer:
    """uvicorn in a thread on a free loopback port, stopped at the end of the test module."""

    def __init__(self, app) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        return self.client

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _png(colour, size=24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def colour_bundle(tmp_path_factory) -> tuple[str, str]:
    return tiny_colour_bundle(str(tmp_path_factory.mktemp("serve")))


@pytest.fixture(scope="module")
def image_server(colour_bundle):
    bundle, data = colour_bundle
    est = hs.load(bundle)
    with LoopbackServer(create_app(est, LIMITS, "model.hs")) as client:
        yield client, est, data


def test_health_metadata_and_openapi(image_server):
    client, est, _ = image_server
    assert client.get("/health").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    assert meta["labels"] == sorted(COLOURS) and meta["backbone"] == TINY and meta["task"] == "classification"
    assert "accuracy" in meta["metrics"]["validation"] and meta["limits"]["max_batch"] == 4
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/metadata"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]


def test_predict_batch_matches_the_python_api(image_server, tmp_path):
    client, est, data = image_server
    paths = [os.path.join(data, c, f"{c}_0.png") for c in sorted(COLOURS)]
    files = [("files", (os.path.basename(p), Path(p).read_bytes(), "image/png")) for p in paths]
    resp = client.post("/predict", files=files)
    assert resp.status_code == 200, resp.text
    got = resp.json()["predictions"]
    assert [g["prediction"] for g in got] == est.predict(paths)
    want = est.predict_proba(paths)
    probs = np.array([[g["probabilities"][c] for c in est.classes_] for g in got])
    assert np.abs(probs - want).max() < 1e-5


@pytest.mark.parametrize("case", ["corrupt", "too_many", "far_too_many", "too_big_body", "too_many_pixels",
                                  "not_multipart", "no_files", "truncated_png"])
def test_bad_requests_get_a_json_4xx_and_the_server_keeps_serving(image_server, case):
    client, _, _ = image_server
    good = _png((200, 40, 40))
    requests = {
        "corrupt": (400, {"files": [("files", ("x.png", b"\x89PNG garbage", "image/png"))]}),
        "truncated_png": (400, {"files": [("files", ("t.png", good[: len(good) // 2], "image/png"))]}),
        "too_many": (413, {"files": [("files", (f"{i}.png", good, "image/png")) for i in range(5)]}),
        # past the multipart parser's own file limit, which answered a bare 400 (bench/serve_load.py's hostile phase)
        "far_too_many": (413, {"files": [("files", (f"{i}.png", good, "image/png")) for i in range(40)]}),
        "too_big_body": (413, {"files": [("files", ("big.png", good + b"\0" * 250_000, "image/png"))]}),
        "too_many_pixels": (413, {"files": [("files", ("huge.png", _png((1, 2, 3), size=400), "image/png"))]}),
        "not_multipart": (415, {"json": {"files": ["a"]}}),
        "no_files": (422, {"data": {"other": "x"}, "files": [("other_file", ("a.txt", b"a", "text/plain"))]}),
    }
    status, kwargs = requests[case]
    resp = client.post("/predict", **kwargs)
    assert resp.status_code == status, resp.text
    assert isinstance(resp.json()["error"], str) and resp.json()["error"]
    after = client.post("/predict", files=[("files", ("ok.png", good, "image/png"))])
    assert after.status_code == 200 and after.json()["predictions"][0]["prediction"] in COLOURS


def test_text_server_with_packaged_minilm(tmp_path):
    from headstart.data.labeled import LabeledData

    positive = ["I love this, it is wonderful", "what a great and happy day", "this is excellent, thank you",
                "absolutely fantastic experience", "brilliant work, I am delighted", "so good, really enjoyed it"]
    negative = ["I hate this, it is awful", "what a terrible and sad day", "this is horrible, never again",
                "absolutely dreadful experience", "bad work, I am furious", "so poor, really disliked it"]
    texts = LabeledData(positive + negative, np.array([1] * 6 + [0] * 6), ["neg", "pos"], "classification", "inline")
    clf = hs.TextClassifier(strategy="features", head_epochs=20, verbose=False, use_cache=False).fit(texts)
    with LoopbackServer(create_app(clf, LIMITS)) as client:
        texts = ["what a wonderful happy day", "a horrible, awful day"]
        resp = client.post("/predict", json={"texts": texts})
        assert resp.status_code == 200, resp.text
        assert [p["prediction"] for p in resp.json()["predictions"]] == clf.predict(texts)
        empty = client.post("/predict", json={"texts": ["fine", "   "]}).json()["predictions"]
        assert empty[1]["error"] == "unusable text" and empty[0]["prediction"] in ("neg", "pos")
        for body, status in [({"texts": ["x" * 201]}, 413), ({"texts": ["a"] * 5}, 413), ({"texts": []}, 422),
                             ({"texts": "not a list"}, 422), ({"wrong": 1}, 422)]:
            resp = client.post("/predict", json=body)
            assert resp.status_code == status and resp.json()["error"], (body, resp.text)
        chunks = iter([b'{"texts": ["' + b"a" * 150_000, b"a" * 100_000 + b'"]}'])  # no Content-Length: chunked
        streamed = client.post("/predict", content=chunks, headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "bytes" in streamed.json()["error"]
        bad_json = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert bad_json.status_code == 422 and bad_json.json()["error"]
        assert client.get("/health").status_code == 200


def _files(*pngs: bytes) -> list:
    return [("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]


def test_pixels_are_budgeted_per_request_from_the_headers(image_server, monkeypatch):
    """Three images each under the per-image limit, together over the request's: refused before decoding."""
    from PIL import ImageFile

    client, _, _ = image_server
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda img: (decoded.append(img.size), real_load(img))[1])
    image = _png((200, 40, 40), size=200)  # 40,000 pixels: under max_pixels (90,000)
    resp = client.post("/predict", files=_files(image, image, image))  # 120,000 > max_request_pixels (100,000)
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"] == ("120000 pixels in 3 images; at most 100000 per request: send fewer or smaller "
                                    "images per request")
    assert decoded == [], "refused from the headers: no image was decoded"
    resp = client.post("/predict", files=_files(image, image))  # 80,000: within the budget
    assert resp.status_code == 200 and len(resp.json()["predictions"]) == 2 and decoded, "decoded once accepted"


def test_a_request_holds_one_full_size_image_at_a_time(image_server, monkeypatch):
    """Each upload is decoded, reduced to the model's input and its pixels freed before the next is decoded: four
    requests of three 32-megapixel images at once took the server from 1.1 to 2.7 GB when all were held together
    (bench/serve_load.py's hostile phase), 1.6 GB now."""
    from PIL import ImageFile

    client, _, _ = image_server
    open_now: set[int] = set()
    held: list[int] = []
    real_load, real_close = ImageFile.ImageFile.load, Image.Image.close

    def load(img):
        open_now.add(id(img))
        held.append(len(open_now))
        return real_load(img)

    def close(img):
        open_now.discard(id(img))
        return real_close(img)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(Image.Image, "close", close)
    image = _png((200, 40, 40), size=150)
    resp = client.post("/predict", files=_files(image, image, image))
    assert resp.status_code == 200 and len(resp.json()["predictions"]) == 3, resp.text
    assert held and max(held) == 1, f"decoded images held at once: {held}"


def test_a_token_is_required_everywhere_but_health(image_server):
    from fastapi.testclient import TestClient

    _, est, _ = image_server
    with TestClient(create_app(est, LIMITS, token="s3cret-token")) as client:
        assert client.get("/health").json() == {"status": "ok"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"},
                        {"Authorization": "Bearer s3cret-token-and-more"}):
            for resp in (client.post("/predict", files=_files(_png((200, 40, 40))), headers=headers),
                         client.get("/metadata", headers=headers)):
                assert resp.status_code == 401 and "API token" in resp.json()["error"], (headers, resp.text)
                assert resp.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": "Bearer s3cret-token"}
        resp = client.post("/predict", files=_files(_png((200, 40, 40))), headers=good)
        assert resp.status_code == 200 and resp.json()["predictions"][0]["prediction"] in COLOURS
        assert client.get("/metadata", headers=good).status_code == 200


def test_cli_serve_takes_the_token_from_the_option_or_the_environment_and_warns_when_exposed(
        colour_bundle, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from headstart.cli import app

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **kwargs: started.update(app=asgi, **kwargs))
    monkeypatch.delenv("HEADSTART_TOKEN", raising=False)

    def serve(*args: str, env: dict | None = None):
        result = CliRunner().invoke(app, ["serve", colour_bundle[0], *args], env=env)
        assert result.exit_code == 0, result.output
        with TestClient(started["app"]) as client:
            status = client.post("/predict", files=_files(_png((200, 40, 40))),
                                 headers={"Authorization": "Bearer tok"}).status_code
            return result.stderr, status, client.post("/predict", files=_files(_png((200, 40, 40)))).status_code

    stderr, _, anonymous = serve("--host", "0.0.0.0", "--max-in-flight", "2")
    assert "without an API token" in stderr and anonymous == 200 and started["host"] == "0.0.0.0"
    stderr, _, anonymous = serve()  # loopback only: no warning
    assert "warning" not in stderr and anonymous == 200
    for args, env in ((["--token", "tok"], None), ([], {"HEADSTART_TOKEN": "tok"})):
        stderr, with_token, anonymous = serve("--host", "0.0.0.0", *args, env=env)
        assert "warning" not in stderr and (with_token, anonymous) == (200, 401), (args, env)


def _limiter(app) -> InFlightLimit:
    while not isinstance(app, InFlightLimit):
        app = app.app
    return app


def test_requests_beyond_the_in_flight_bound_get_503_with_retry_after(image_server):
    from dataclasses import replace

    from fastapi.testclient import TestClient

    _, est, _ = image_server
    app = create_app(est, replace(LIMITS, max_in_flight=1))
    slots = _limiter(app).slots
    with TestClient(app) as client:
        assert slots.acquire(blocking=False), "the one slot is free"
        try:  # the slot held, as by a request still decoding or waiting for the model
            busy = client.post("/predict", files=_files(_png((200, 40, 40))))
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
            assert "too many requests in flight" in busy.json()["error"]
            assert client.get("/health").status_code == 200, "health is answered while busy"
        finally:
            slots.release()
        corrupt = client.post("/predict", files=[("files", ("x.png", b"\x89PNG garbage", "image/png"))])
        assert corrupt.status_code == 400
        for _ in range(2):  # each request, refused or answered, gave its slot back
            assert client.post("/predict", files=_files(_png((200, 40, 40)))).status_code == 200
    assert slots.acquire(blocking=False) and (slots.release() or True)


def test_internal_errors_answer_a_generic_500_and_go_to_the_log(image_server, monkeypatch, caplog):
    from fastapi.testclient import TestClient

    _, est, _ = image_server
    secret = "secret detail from /srv/models/internal.py"

    def fail(*_):
        raise RuntimeError(secret)

    monkeypatch.setattr(serve_module.BatchScorer, "score_prepared", fail)  # what score() calls too
    monkeypatch.setattr(serve_module, "_plain_metrics", fail)
    with TestClient(create_app(est, LIMITS), raise_server_exceptions=False) as client, caplog.at_level("ERROR"):
        for resp in (client.post("/predict", files=_files(_png((200, 40, 40)))), client.get("/metadata")):
            assert resp.status_code == 500 and resp.json() == {"error": INTERNAL_ERROR}, resp.text
            assert secret not in resp.text and "RuntimeError" not in resp.text
        malformed = client.post("/predict", content=b"--x\r\nnot a part",
                                headers={"content-type": "multipart/form-data; boundary=x"})
        assert malformed.status_code == 400 and malformed.json()["error"].startswith("malformed multipart body")
        assert "Invalid multipart data" not in malformed.text, "the parser's own text stays in the log"
    assert any(secret in record.getMessage() or (record.exc_info and secret in str(record.exc_info[1]))
               for record in caplog.records), "the details are logged"
