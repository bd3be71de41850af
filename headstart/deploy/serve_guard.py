"""What stands in front of the server's app (serve.py): an optional API token, a bound on requests in flight, and
one on the body's size (`BodyLimit`).

All are plain ASGI middleware, outside the app, so a request refused by the first two costs neither a body read
nor a decoded pixel, and one refused by the body limit none of a parser's time. The token is checked first: a
client without it cannot even take an in-flight slot. `ServeLimits` holds every bound the server keeps (the pixel
bounds are checked in serve_uploads.py).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

TOKEN_ENV = "HEADSTART_TOKEN"
OPEN_PATHS = ("/health",)  # load balancers and orchestrators probe it without credentials
RETRY_AFTER_S = 1  # a batch takes well under a second on the small models headstart serves


@dataclass(frozen=True)
class ServeLimits:
    max_request_bytes: int = 32 << 20
    max_batch: int = 64
    max_pixels: int = 40_000_000  # width x height of one image, checked from the header before decoding
    max_text_chars: int = 10_000
    # Width x height summed over a request's images, also from the headers: 100 M pixels decode to ~300 MB of
    # RGB (eight 12-megapixel photos), and max_batch images each under max_pixels could otherwise reach 2.5 G.
    max_request_pixels: int = 100_000_000
    # Requests held at once (body, decoded image, waiting batch): the model runs one batch at a time, so a few
    # keep it busy; worst-case memory is about this many times (max_request_bytes + 3 x max_pixels), as a request
    # decodes one image at a time (serve_uploads.open_images).
    max_in_flight: int = 4


async def json_response(send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class TokenAuth:
    """ASGI middleware: every request but `OPEN_PATHS` needs `Authorization: Bearer <token>`, else a 401.

    Compared with `hmac.compare_digest`, so the time taken does not tell an attacker how much of a guess matched.
    """

    def __init__(self, app, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            return await json_response(send, 401, "missing or wrong API token: send 'Authorization: Bearer <token>'",
                                       [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


class InFlightLimit:
    """ASGI middleware: at most `slots` prediction requests at once; beyond them a 503 with Retry-After at once.

    A slot is held from before the body is read until the answer is sent, so the bodies buffered, the images
    decoded and the batches waiting for the model are bounded together. The model runs one batch at a time
    anyway (serve.py); requests queued beyond a few only hold memory and add latency, so they are turned away
    rather than queued. Other paths (health, metadata, docs) are cheap and always answered.
    """

    def __init__(self, app, slots: int, paths: tuple[str, ...] = ("/predict",)) -> None:
        self.app, self.paths = app, paths
        # a thread semaphore, taken without waiting: safe from the event loop, and a test can hold it
        self.slots = threading.BoundedSemaphore(slots)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            return await self.app(scope, receive, send)
        if not self.slots.acquire(blocking=False):
            return await json_response(send, 503, "server busy: too many requests in flight; retry shortly",
                                       [(b"retry-after", str(RETRY_AFTER_S).encode())])
        try:
            return await self.app(scope, receive, send)
        finally:
            self.slots.release()


def resolve_token(token: str | None) -> str | None:
    """The token given, else the `HEADSTART_TOKEN` environment variable; empty means none."""
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    return (token.strip() or None) if token else None


def exposure_warning(host: str, token: str | None) -> str | None:
    """A warning when the server is reachable from other machines and anyone reaching it may use it."""
    if token:
        return None
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"warning: serving on {host} without an API token: anyone who can reach this port can use the model; "
            f"set {TOKEN_ENV} (or --token) to require 'Authorization: Bearer <token>'")


class BodyLimit:
    """ASGI middleware: refuses bodies over the limit, whether announced by Content-Length or streamed (chunked).

    The body is read here, up to the limit, then replayed to the app: a 413 is answered before any parser sees a
    byte (parsers turn errors raised mid-read into a generic 400).
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await json_response(send, 413, self._message())
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await json_response(send, 413, self._message())
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for a disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    def _message(self) -> str:
        return f"request body over {self.max_bytes} bytes; send fewer or smaller inputs per request"
