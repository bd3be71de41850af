"""What stands in front of the server's app (serve.py): a bound on requests in flight.

Plain ASGI middleware, outside the app, so a request refused by it costs neither a body read nor a decoded pixel.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

RETRY_AFTER_S = 1  # a batch takes well under a second on the small models headstart serves


async def json_response(send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


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
