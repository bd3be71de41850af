"""A request's image uploads as model inputs, for the server (serve.py): every header read first and checked
against the pixel limits, per image and per request, before any pixel is decoded; then images decoded one at a time,
each reduced to the model's input and its full-size pixels freed before the next. `RequestProblem` is how the server
answers a bad request (a 4xx with a one-line JSON error): raised here and in serve.py.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager

from PIL import Image

from .serve_guard import ServeLimits


class RequestProblem(Exception):
    """A bad request: answered with `status` and a one-line JSON error, and the server goes on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def open_images(raw: list[tuple[bytes, str]], limits: ServeLimits, prepare) -> list:
    """A request's uploads as model inputs (`prepare`: BatchScorer.prepare), decoded once every header has passed
    the pixel limits, per image and in total: a request that would decode too much is refused before its first
    pixel is decoded. Images are decoded one at a time, each reduced to the model's input size and its full-size
    pixels freed before the next: a request holds one full-size image at a time, not all of them (measured by
    bench/serve_load.py: four requests of three 32-megapixel images at once took the server from 1.1 to 2.7 GB)."""
    headers = [_image_header(data, name, limits.max_pixels) for data, name in raw]
    total = sum(img.width * img.height for img, _ in headers)
    if total > limits.max_request_pixels:
        raise RequestProblem(413, f"{total} pixels in {len(headers)} images; at most {limits.max_request_pixels} "
                                  "per request: send fewer or smaller images per request")
    return [_decode(img, name, prepare) for img, name in headers]


def _image_header(raw: bytes, name: str, max_pixels: int) -> tuple[Image.Image, str]:
    """Open one upload lazily (PIL reads only the header), refusing it (400/413) rather than failing the server."""
    with _image_problems(name), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(raw))
        if img.width * img.height > max_pixels:
            raise RequestProblem(413, f"{name}: {img.width}x{img.height} pixels; at most {max_pixels} allowed")
        return img, name


def _decode(img: Image.Image, name: str, prepare):
    with _image_problems(name), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img.load()
            return prepare(img)
        finally:
            img.close()  # frees the decoded pixels now, not when the request's list of images goes


@contextmanager
def _image_problems(name: str):
    """PIL's failures as a 413 (decompression bomb) or a 400 naming the upload, never PIL's own text."""
    try:
        yield
    except RequestProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestProblem(413, f"{name}: image too large (decompression bomb guard)") from None
    except Exception as err:  # PIL raises many types for many formats; each means "not an image we can read"
        raise RequestProblem(400, f"{name}: not a readable image ({type(err).__name__})") from None
