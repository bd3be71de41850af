"""An HTTP server for one bundle (FastAPI on uvicorn): `POST /predict`, `GET /health`, `GET /metadata`, and the
OpenAPI schema at `/openapi.json` (browsable at `/docs`).

Every limit (request bytes, batch size, pixels per image and per request, text length) answers a 4xx with
`{"error": ...}`; a corrupt upload is a 400. Requests are checked before any pixel is decoded, and the model runs
under a lock: torch already uses every core for one batch, so concurrent batches would only fight over them.
In front of the app (serve_guard.py): an optional API token (401), a bound on requests in flight (503), the body
limit (413). Image uploads are checked and decoded in serve_uploads.py.
An unexpected failure answers a generic 500 and is logged here: exception text can reveal paths and internals.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations (Request, the pydantic models
# defined inside create_app) at runtime, and string annotations of local classes cannot be resolved.
import logging
import sys
import threading
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from ..detection import ObjectDetector
from ..errors import HeadstartError
from .batch_scorer import BatchScorer
from .loading import load
from .predict_stream import format_row
from .serve_guard import BodyLimit, InFlightLimit, ServeLimits, TokenAuth, exposure_warning, resolve_token
from .serve_uploads import RequestProblem, open_images

if TYPE_CHECKING:
    from ..estimator import TransferEstimator


# Errors and their tracebacks; without logging configured, Python's last-resort handler prints them to stderr.
log = logging.getLogger("headstart.serve")


def create_app(est: "TransferEstimator | ObjectDetector", limits: ServeLimits | None = None, bundle: str = "",
               token: str | None = None) -> TokenAuth | InFlightLimit:
    """An ASGI app serving a fitted estimator (from `hs.load`, on torch or onnxruntime): FastAPI behind the body
    limit, the in-flight bound and, with `token`, the API token check (`/health` stays open). A detector
    (hs.ObjectDetector) answers with boxes, under the same limits."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from pydantic import BaseModel, Field
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException
    except ImportError:
        raise HeadstartError("serving needs fastapi, uvicorn and python-multipart: "
                             "pip install fastapi uvicorn python-multipart") from None
    est._check_fitted()
    limits = limits or ServeLimits()
    detector = isinstance(est, ObjectDetector)
    scorer = DetectorScorer(est) if detector else BatchScorer(est)
    lock = threading.Lock()
    runtime = "onnx" if getattr(est, "runtime_", None) is not None else "torch"

    class TextsIn(BaseModel):
        texts: list[str] = Field(..., description="texts to classify, at most max_batch per request")

    class Prediction(BaseModel):
        prediction: str | float | list[str] | None
        score: float | None = None
        probabilities: dict[str, float] | None = None
        error: str | None = None

    class PredictionsOut(BaseModel):
        predictions: list[Prediction]
        seconds: float

    class Box(BaseModel):
        box: list[float] = Field(..., description="xmin, ymin, xmax, ymax in the image's pixels")
        label: str
        score: float

    class Detections(BaseModel):
        boxes: list[Box] = Field(..., description="best first")

    class DetectionsOut(BaseModel):
        predictions: list[Detections]
        seconds: float

    app = FastAPI(title=f"headstart: {est.spec_.name} {est.modality} {est._task}",
                  description=f"Predictions from the headstart bundle {bundle}".strip())

    @app.exception_handler(RequestProblem)
    async def _problem(_, exc: RequestProblem):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http(_, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(_, exc: Exception):  # anything unforeseen: a generic answer, never the exception's text
        # (Starlette raises the exception again once this answer is sent, so the server logs its traceback.)
        return JSONResponse({"error": INTERNAL_ERROR}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', 'malformed')}"}, status_code=422)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/metadata")
    def metadata() -> dict:
        return {"labels": est.classes_, "task": est._task, "modality": est.modality, "backbone": est.spec_.name,
                "preprocess": est.spec_.preprocess.to_dict(), "metrics": _plain_metrics(est.metrics_),
                "runtime": runtime, "limits": asdict(limits),
                **({"tile_size": est.tile_size} if detector else {})}

    def predict_items(items: list, prepared: bool = False) -> dict:
        """Scores for texts, or for images already reduced to model inputs (`prepared`, see
        serve_uploads.open_images)."""
        if not items:
            raise RequestProblem(422, "no inputs: send at least one image file or text")
        if len(items) > limits.max_batch:
            raise RequestProblem(413, f"{len(items)} inputs in one request; at most {limits.max_batch} allowed")
        started = time.perf_counter()
        try:
            with lock:
                scores, ok = scorer.score_prepared(items) if prepared else scorer.score(items)
        except Exception:  # the model failed on inputs that passed every check: a bug or a broken runtime
            log.exception("scoring %d input(s) failed", len(items))
            raise RequestProblem(500, INTERNAL_ERROR) from None
        if detector:
            return {"predictions": scores, "seconds": round(time.perf_counter() - started, 4)}
        rows = []
        for s, good in zip(scores, ok):
            r = format_row(est, "", s, bool(good), with_probs=True)
            probs = {c: r[f"p_{c}"] for c in est.classes_} if good and est._task != "regression" else None
            rows.append(Prediction(prediction=None if not good else r["prediction"],
                                   score=r["score"] if r["score"] != "" else None, probabilities=probs,
                                   error=r["error"] or None))
        return {"predictions": rows, "seconds": round(time.perf_counter() - started, 4)}

    if est.modality == "image":
        @app.post("/predict", response_model=DetectionsOut if detector else PredictionsOut,
                  openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                      "type": "object", "properties": {"files": {"type": "array", "items": {
                          "type": "string", "format": "binary"}}}, "required": ["files"]}}}, "required": True}})
        async def predict_images(request: Request) -> dict:
            """Classify (or, for a detector, find boxes in) uploaded images: multipart/form-data, one or more
            `files` parts."""
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                raise RequestProblem(415, "send images as multipart/form-data with one or more 'files' parts")
            try:
                form = await request.form(max_files=limits.max_batch + 1, max_fields=limits.max_batch + 1)
            except Exception as err:  # malformed multipart bodies raise several types inside starlette
                # starlette's count limits, raised as a 400 HTTPException carrying the parser's message
                if str(getattr(err, "detail", err)).startswith(("Too many files", "Too many fields")):
                    raise RequestProblem(413, f"more than {limits.max_batch} images in one request") from None
                log.info("malformed multipart body: %s: %s", type(err).__name__, err)
                raise RequestProblem(400, "malformed multipart body: send images as multipart/form-data "
                                          "'files' parts") from None
            uploads = [v for k, v in form.multi_items() if k == "files" and hasattr(v, "read")]
            if len(uploads) > limits.max_batch:
                raise RequestProblem(413, f"more than {limits.max_batch} images in one request")
            raw = [(await u.read(), u.filename or f"file {i}") for i, u in enumerate(uploads)]

            def decode_and_predict() -> dict:  # off the event loop: decoding and the model take CPU time
                return predict_items(open_images(raw, limits, scorer.prepare), prepared=True)

            return await run_in_threadpool(decode_and_predict)
    else:
        @app.post("/predict", response_model=PredictionsOut)
        def predict_texts(body: TextsIn) -> dict:
            """Classify texts: {"texts": ["...", ...]}."""
            for i, text in enumerate(body.texts):
                if len(text) > limits.max_text_chars:
                    raise RequestProblem(413, f"texts[{i}] has {len(text)} characters; at most "
                                              f"{limits.max_text_chars} allowed")
            return predict_items(list(body.texts))

    guarded = InFlightLimit(BodyLimit(app, limits.max_request_bytes), limits.max_in_flight)
    return TokenAuth(guarded, token) if token else guarded


class DetectorScorer:
    """The detector's side of BatchScorer: an upload kept at full size (boxes are found on the image's own pixels,
    tiled as in `predict`), and per image its boxes, labels and scores, best first."""

    def __init__(self, est: ObjectDetector) -> None:
        self.est = est

    def prepare(self, img: Image.Image) -> torch.Tensor:
        # uint8, one copy of the decoded pixels: the request's pixel budget bounds what a request holds
        return pil_to_tensor(img if img.mode == "RGB" else img.convert("RGB"))

    def score_prepared(self, images: list[torch.Tensor]) -> tuple[list[dict], list[bool]]:
        rows = []
        for pixels in images:
            found = self.est.detect_image(pixels)
            rows.append({"boxes": [{"box": [round(v, 2) for v in box], "label": self.est.classes_[int(k)],
                                    "score": round(float(s), 5)}
                                   for box, k, s in zip(found["boxes"].tolist(), found["labels"], found["scores"])]})
        return rows, [True] * len(rows)


INTERNAL_ERROR = "internal error while answering this request; the details are in the server's log"


def _plain_metrics(metrics: dict) -> dict:
    """Headline numbers only: per-class tables and confusion matrices belong in the report, not in metadata."""
    validation = metrics.get("validation", {}) if isinstance(metrics, dict) else {}
    keep = ("accuracy", "macro_f1", "micro_f1", "mae", "rmse", "r2", "n", "map_50", "map_75", "map")
    return {"validation": {k: validation[k] for k in keep if k in validation},
            **{k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}}


def serve(bundle: str, host: str = "127.0.0.1", port: int = 8000, runtime: str = "torch",
          limits: ServeLimits | None = None, token: str | None = None) -> None:
    """Load `bundle` and serve it until interrupted. `token` (default: the HEADSTART_TOKEN environment variable):
    the API token every request but /health must send as `Authorization: Bearer <token>`."""
    import uvicorn

    token = resolve_token(token)
    if (warning := exposure_warning(host, token)) is not None:
        print(warning, file=sys.stderr)
    est = load(bundle, runtime=runtime)
    est.verbose = False
    uvicorn.run(create_app(est, limits, bundle, token), host=host, port=port, log_level="warning")
