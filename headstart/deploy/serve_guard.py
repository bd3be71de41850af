"""What stands in front of the server's app (serve.py): an optional API token and a bound on requests in flight.

Both are plain ASGI middleware, outside the app, so a request refused by them costs neither a body read nor a
decoded pixel. The token is checked first: a client without it cannot even take an in-flight slot.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import threading
from collections.abc import Sequence

TOKEN_ENV = "HEADSTART_TOKEN"
OPEN_PATHS = ("/health",)  # load balancers and orchestrators probe it without credentials
RETRY_AFTER_S = 1  # a batch takes well under a second on the small models headstart serves


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
