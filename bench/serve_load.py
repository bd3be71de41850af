"""Load test of `headstart serve` on loopback: a fixed number of requests, a fixed number in flight at once.

The server runs as its own process (`python -m headstart.cli serve`), as a user starts it. The client sends
`--requests` POST /predict requests, `--concurrency` at a time, each with `--per-request` Fashion-MNIST images
(multipart) or tweets (JSON), and prints throughput, p50/p99 latency and the number of failed requests (any
status but 200, or a connection error). A 503 (more requests than the server's in-flight bound) is sent again
after its Retry-After, as a client should; those retries are counted, and their wait is in the latency.
Baseline, in this process before the server starts: the same batches scored directly by the same model
(`BatchScorer`), one after another; the ratio is served items/s over direct.

Then, for images, a hostile phase (bench/serve_hostile.py, `--hostile-rounds 0` skips it): pixel floods (48 blank
6000x6000 PNGs in one request, several at once), the largest requests the pixel budget allows, a one-image bomb,
40 MB bodies (declared and chunked), too many files and corrupt uploads, while `--hostile-good` good requests go on.
It passes when the server's peak RSS (VmHWM) stays under `--rss-limit-mb`, every good request gets its answer
(retrying on 503 as Retry-After says) and every hostile one is refused as it should be (413/400, or 503).

Run: .venv/bin/python bench/serve_load.py [--modality image|text] [--requests 200] [--concurrency 4]
     [--per-request 4] [--runtime torch|onnx] [--threads N] [--hostile-rounds 3] [--hostile-at-once 2]
     [--hostile-good 40] [--rss-limit-mb 2500] [--json bench/results/serve_load.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from serve_hostile import ATTEMPTS, check, hostile_load, hostile_payloads, summary_table, vm_hwm_mb

from headstart._allocator import tune_allocator


def build_bundle(modality: str, folder: str) -> tuple[str, list]:
    """A small trained head on the packaged backbone, and the inputs to send: PNG bytes or texts."""
    import headstart as hs

    if modality == "image":
        from headstart.data.fashion_mnist import export_subset
        from headstart.deploy.predict_inputs import iter_inputs

        train = export_subset(os.path.join(folder, "train"), "train", 3, seed=0)
        test = export_subset(os.path.join(folder, "test"), "test", 5, seed=1)
        est = hs.ImageClassifier(strategy="features", head_epochs=5, verbose=False, use_cache=False).fit(train)
        payloads = []
        for path in iter_inputs("image", [test]):
            with open(path, "rb") as f:
                payloads.append(f.read())
    else:
        from headstart.data.tweets import export_split, load_tweets

        train, _, _ = export_split(os.path.join(folder, "tweets"), per_class_train=10, test_size=10)
        est = hs.TextClassifier(strategy="features", head_epochs=5, verbose=False, use_cache=False).fit(train)
        payloads = load_tweets()[0][:200]
    return est.save(os.path.join(folder, f"{modality}.hs")), payloads


def request_batches(payloads: list, requests: int, per_request: int) -> list[list]:
    return [[payloads[(i * per_request + j) % len(payloads)] for j in range(per_request)] for i in range(requests)]


def direct_baseline(bundle: str, runtime: str, batches: list[list], modality: str) -> float:
    """Items per second scoring the same batches in-process, sequentially (no HTTP, no JSON)."""
    from PIL import Image

    import headstart as hs
    from headstart.deploy.batch_scorer import BatchScorer

    scorer = BatchScorer(hs.load(bundle, runtime=runtime))

    def as_items(batch: list) -> list:
        return [Image.open(io.BytesIO(b)) for b in batch] if modality == "image" else batch

    scorer.score(as_items(batches[0]))  # warm-up
    start = time.perf_counter()
    for batch in batches:
        scorer.score(as_items(batch))
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: str, port: int, runtime: str, max_batch: int) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "headstart.cli", "serve", bundle, "--port", str(port), "--runtime", runtime,
           "--max-batch", str(max_batch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not come up within 300 s")


async def load_test(port: int, batches: list[list], concurrency: int, modality: str) -> dict:
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    retries = 0
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300, limits=limits) as client:

        async def one(batch: list) -> None:
            nonlocal retries
            async with gate:
                start = time.perf_counter()
                try:
                    for _ in range(ATTEMPTS):
                        if modality == "image":
                            files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(batch)]
                            resp = await client.post("/predict", files=files)
                        else:
                            resp = await client.post("/predict", json={"texts": batch})
                        if resp.status_code != 503:
                            break
                        # more requests than the server's in-flight bound: back after Retry-After, as a client
                        # should; the wait counts in the latency
                        retries += 1
                        await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
                    if resp.status_code != 200 or len(resp.json()["predictions"]) != len(batch):
                        failures.append(f"{resp.status_code}: {resp.text[:200]}")
                except httpx.HTTPError as err:
                    failures.append(repr(err))
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in batches))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    items = sum(len(b) for b in batches)
    return {"requests": len(batches), "failed": len(failures), "first_failures": failures[:3],
            "retries_after_503": retries,
            "wall_s": round(wall, 2), "requests_per_s": round(len(batches) / wall, 2),
            "items_per_s": round(items / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", choices=("image", "text"), default="image")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (the server holds 4 "
                        "at once by default, --max-in-flight, and answers more with 503 + Retry-After)")
    parser.add_argument("--per-request", type=int, default=4, help="inputs per request")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0: torch's default)")
    parser.add_argument("--hostile-rounds", type=int, default=3, help="rounds of hostile requests (images; 0: none)")
    parser.add_argument("--hostile-at-once", type=int, default=2, help="requests of each hostile kind per round, "
                        "sent together")
    parser.add_argument("--hostile-good", type=int, default=40, help="good requests sent during the hostile phase")
    parser.add_argument("--rss-limit-mb", type=float, default=2500, help="the server's peak RSS must stay under it")
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "serve_load.json"))
    args = parser.parse_args()
    if args.threads:  # a shared CPU: fewer threads than cores avoid OpenMP barriers stalling on busy cores
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the server process
        torch.set_num_threads(args.threads)
    tune_allocator()
    os.environ.setdefault("MALLOC_MMAP_MAX_", "0")  # the server process gets the same allocator settings
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "100000000000")
    os.environ.setdefault("HEADSTART_CACHE", tempfile.mkdtemp(prefix="hs-bench-cache-"))
    with tempfile.TemporaryDirectory() as folder:
        bundle, payloads = build_bundle(args.modality, folder)
        batches = request_batches(payloads, args.requests, args.per_request)
        direct = direct_baseline(bundle, args.runtime, batches, args.modality)
        port = free_port()
        max_batch = max(64, args.per_request)
        server = start_server(bundle, port, args.runtime, max_batch)
        hostile = None
        try:
            result = asyncio.run(load_test(port, batches, args.concurrency, args.modality))
            result["server_peak_rss_mb"] = round(vm_hwm_mb(server.pid))
            if args.modality == "image" and args.hostile_rounds > 0:
                payloads_bad = hostile_payloads(max_batch)
                hostile = asyncio.run(hostile_load(port, batches[: args.hostile_good], payloads_bad,
                                                   args.hostile_rounds, args.hostile_at_once, args.concurrency))
                hostile["server_peak_rss_mb"] = round(vm_hwm_mb(server.pid))
                hostile["server_exit"] = server.poll()
                hostile["rss_limit_mb"] = args.rss_limit_mb
                hostile["problems"] = check(hostile, args.rss_limit_mb)
                hostile["passed"] = not hostile["problems"]
        finally:
            server.terminate()
            server.wait(timeout=30)
    result.update({"modality": args.modality, "runtime": args.runtime, "concurrency": args.concurrency,
                   "per_request": args.per_request, "direct_items_per_s": round(direct, 2),
                   "ratio_vs_direct": round(result["items_per_s"] / direct, 3)})
    result = {**run_record(args), **result, "hostile": hostile}
    print(f"{args.modality} on {args.runtime}: {result['requests']} requests x {args.per_request} inputs, "
          f"{args.concurrency} concurrent: {result['requests_per_s']:.1f} req/s, {result['items_per_s']:.1f} "
          f"inputs/s (direct {direct:.1f}/s, ratio {result['ratio_vs_direct']:.2f}); p50 {result['p50_ms']:.0f} ms, "
          f"p99 {result['p99_ms']:.0f} ms; failed {result['failed']} "
          f"({result['retries_after_503']} retries after 503)")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    if hostile:
        print(summary_table(hostile))
        print(f"hostile phase: {hostile['hostile_requests']} hostile requests over {args.hostile_rounds} rounds, "
              f"{hostile['good_requests']} good ones ({hostile['good_failed']} failed, "
              f"{hostile['good_retries_after_503']} retries after 503); server peak RSS "
              f"{hostile['server_peak_rss_mb']} MB (limit {args.rss_limit_mb:.0f} MB; "
              f"{result['server_peak_rss_mb']} MB after the plain load): "
              + ("PASS" if hostile["passed"] else "FAIL: " + "; ".join(hostile["problems"])))
    print(f"results: {args.json}")
    if result["failed"]:
        raise SystemExit(f"{result['failed']} requests failed, first: {result['first_failures'][0]}")
    if hostile and not hostile["passed"]:
        raise SystemExit("hostile phase failed: " + "; ".join(hostile["problems"]))


def run_record(args: argparse.Namespace) -> dict:
    """What a result needs to be read later: the code measured, the machine, the arguments, the date."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), *cmd], capture_output=True,
                              text=True).stdout.strip()

    code = ("..", ":(exclude)results")  # what the results measure; the results files themselves are not code
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", *code)),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "system": platform.platform(), "python": platform.python_version(),
                        "load_avg": os.getloadavg()},
            "arguments": vars(args)}


if __name__ == "__main__":
    main()
