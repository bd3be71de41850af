"""The hostile phase of bench/serve_load.py: abusive requests sent on loopback while good ones go on.

What each hostile request is, and the answer the server owes it (deploy/serve.py, deploy/serve_guard.py):

  pixel flood     48 blank 6000x6000 PNGs in one request (~5 MB on the wire, 1.7 G pixels decoded): 413 from
                  the headers, before a pixel is decoded; several such requests at once
  largest allowed three blank 5700x5700 PNGs (97.5 M pixels: each under the 40 M per image, together just under
                  the 100 M per request): 200, the most memory one request may legitimately cost; several at once
  one-image bomb  one 30000x30000 1-bit PNG (~100 KB on disk): 413
  oversized body  40 MB declared in Content-Length, and 40 MB streamed without it (chunked): 413
  too many files  max_batch + 36 tiny images: 413
  corrupt upload  random bytes named .png: 400

Each round sends the kinds one after another, `at_once` copies of a kind together. A request answered 503 (the
in-flight bound, Retry-After) is sent again until it gets another answer, at most `ATTEMPTS` times: good ones
after Retry-After, hostile ones after 0.2 s, as an impatient client would; the 503s are counted apart.
A good request that never gets its 200 fails.
The server's peak RSS (VmHWM of its process) is read from /proc at the end and compared with the limit.
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
import time
import zlib
from collections import Counter

from PIL import Image

ATTEMPTS = 40
EXPECTED = {"pixel flood": {413}, "largest allowed": {200}, "one-image bomb": {413}, "oversized body": {413},
            "oversized body (chunked)": {413}, "too many files": {413}, "corrupt upload": {400}}


def _blank_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def _bomb_png(side: int) -> bytes:
    """A real 1-bit PNG of side x side blank pixels, built row by row (PIL would allocate it whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def hostile_payloads(max_batch: int) -> dict[str, list]:
    """Multipart file lists (or raw bodies, for the oversized ones) by kind."""
    flood, large = _blank_png(6000), _blank_png(5700)
    tiny = _blank_png(8)
    return {
        "pixel flood": [("files", (f"f{i}.png", flood, "image/png")) for i in range(48)],
        "largest allowed": [("files", (f"l{i}.png", large, "image/png")) for i in range(3)],
        "one-image bomb": [("files", ("bomb.png", _bomb_png(30000), "image/png"))],
        "oversized body": os.urandom(40 << 20),
        "oversized body (chunked)": None,  # streamed by the sender
        "too many files": [("files", (f"t{i}.png", tiny, "image/png")) for i in range(max_batch + 36)],
        "corrupt upload": [("files", ("junk.png", os.urandom(4096), "image/png"))],
    }


def vm_hwm_mb(pid: int) -> float:
    """Peak resident memory of process `pid` so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


async def _send_hostile(client, kind: str, payload, busy: Counter) -> int | str:
    """The final answer to one hostile request, sent again while it is 503 (each 503 counted in `busy`)."""
    for _ in range(ATTEMPTS):
        status = await _send_once(client, kind, payload)
        if status != 503:
            return status
        busy[kind] += 1
        await asyncio.sleep(0.2)
    return 503


async def _send_once(client, kind: str, payload) -> int | str:
    import httpx

    try:
        if kind == "oversized body":
            resp = await client.post("/predict", content=payload,
                                     headers={"content-type": "multipart/form-data; boundary=x"})
        elif kind == "oversized body (chunked)":
            async def stream():
                block = bytes(1 << 20)
                for _ in range(40):
                    yield block
            resp = await client.post("/predict", content=stream(),
                                     headers={"content-type": "multipart/form-data; boundary=x"})
        else:
            resp = await client.post("/predict", files=payload)
        return resp.status_code
    except httpx.HTTPError as err:  # the server may close the connection on a refused body mid-upload
        return type(err).__name__


async def hostile_load(port: int, good_batches: list[list], hostile: dict[str, list], rounds: int,
                       at_once: int, concurrency: int) -> dict:
    """Good requests (`concurrency` at a time) while `rounds` rounds of hostile ones are sent, each kind
    `at_once` at a time. Returns statuses of the hostile requests and the good requests' fate."""
    import httpx

    statuses: dict[str, Counter] = {k: Counter() for k in hostile}
    busy: Counter = Counter()  # 503s on the way to each hostile request's final answer
    good_failed: list[str] = []
    retries = 0
    gate = asyncio.Semaphore(concurrency)
    timeout = httpx.Timeout(300)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout,
                                 limits=httpx.Limits(max_connections=concurrency + at_once * len(hostile))) as client:

        async def good(batch: list) -> None:
            nonlocal retries
            files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(batch)]
            async with gate:
                for _ in range(ATTEMPTS):
                    try:
                        resp = await client.post("/predict", files=files)
                    except httpx.HTTPError as err:
                        good_failed.append(repr(err))
                        return
                    if resp.status_code == 503:  # the in-flight bound: come back as told
                        retries += 1
                        await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
                        continue
                    if resp.status_code != 200 or len(resp.json()["predictions"]) != len(batch):
                        good_failed.append(f"{resp.status_code}: {resp.text[:200]}")
                    return
                good_failed.append(f"503 after {ATTEMPTS} attempts")

        async def attacker() -> None:
            for _ in range(rounds):
                for kind, payload in hostile.items():
                    answers = await asyncio.gather(*(_send_hostile(client, kind, payload, busy)
                                                     for _ in range(at_once)))
                    statuses[kind].update(answers)

        started = time.perf_counter()
        await asyncio.gather(attacker(), *(good(b) for b in good_batches))
        wall = time.perf_counter() - started
    unexpected = {k: {str(s): n for s, n in c.items() if s not in EXPECTED[k]}
                  for k, c in statuses.items()}
    return {"wall_s": round(wall, 1), "good_requests": len(good_batches), "good_failed": len(good_failed),
            "good_first_failures": good_failed[:3], "good_retries_after_503": retries,
            "hostile_statuses": {k: {str(s): n for s, n in c.items()} for k, c in statuses.items()},
            "hostile_503s_before_answer": dict(busy),
            "hostile_unexpected": {k: v for k, v in unexpected.items() if v},
            "hostile_requests": sum(sum(c.values()) for c in statuses.values())}


def check(result: dict, limit_mb: float) -> list[str]:
    """What failed the phase: memory over the limit, good requests lost, hostile ones answered otherwise."""
    problems = []
    if result["server_peak_rss_mb"] > limit_mb:
        problems.append(f"server peak RSS {result['server_peak_rss_mb']:.0f} MB over the {limit_mb:.0f} MB limit")
    if result["good_failed"]:
        problems.append(f"{result['good_failed']} good requests failed: {result['good_first_failures'][0]}")
    if result["hostile_unexpected"]:
        problems.append(f"hostile requests answered otherwise than refused: {result['hostile_unexpected']}")
    if result.get("server_exit") is not None:
        problems.append(f"the server exited ({result['server_exit']})")
    return problems


def summary_table(result: dict) -> str:
    lines = [f"{'hostile kind':<26} {'sent':>5} {'expected':>9}  final answers (503s before them)"]
    for kind, c in result["hostile_statuses"].items():
        expected = "/".join(map(str, sorted(EXPECTED[kind])))
        lines.append(f"{kind:<26} {sum(c.values()):>5} {expected:>9}  "
                     + ", ".join(f"{s}: {n}" for s, n in sorted(c.items()))
                     + f" ({result['hostile_503s_before_answer'].get(kind, 0)})")
    return "\n".join(lines)
