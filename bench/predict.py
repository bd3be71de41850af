"""Benchmark: `headstart predict` (streaming: lazy input listing, prefetching thread, CSV written per batch)
against a bare loop over the same model, on torch and on onnxruntime, in one process.

The bare loop is what a user writes by hand: for each batch of inputs, decode and resize the images (or tokenize
the texts), run the same graph, keep the scores; nothing written, nothing overlapped. Ours is
`headstart.deploy.predict_stream.stream_predict`, the code behind `headstart predict`, writing a CSV. Images:
Fashion-MNIST test images through the packaged EfficientNet-Lite0 at 224 px; texts: the packaged tweets through
MiniLM-L6. Each measurement is preceded by a warm-up batch; runs alternate (bare, ours) and the median is kept.
Target: ours / bare >= 0.9 on every runtime.

Run: .venv/bin/python bench/predict.py [--images 256] [--texts 512] [--batch-size 32] [--repeats 3]
     [--runtimes torch,onnx] [--threads N] [--json bench/results/predict.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from headstart._allocator import tune_allocator

TARGET = 0.9


def bare_loop(est, items: list, batch_size: int) -> tuple[float, np.ndarray]:
    from headstart.deploy.batch_scorer import BatchScorer

    scorer = BatchScorer(est)
    start = time.perf_counter()
    out = []
    for i in range(0, len(items), batch_size):
        prepared = [scorer.prepare(x) for x in items[i: i + batch_size]]
        out.append(scorer.run(scorer.collate(prepared)))
    return time.perf_counter() - start, np.concatenate(out)


def ours(est, inputs: list[str], batch_size: int, folder: str) -> tuple[float, int]:
    from headstart.deploy.predict_stream import stream_predict

    out = os.path.join(folder, "predictions.csv")
    start = time.perf_counter()
    done = stream_predict(est, inputs, out, batch_size=batch_size, verbose=False)
    return time.perf_counter() - start, done["rows"]


def fitted_models(modality: str, folder: str, runtimes: list[str]) -> dict:
    """A small trained head on the packaged backbone, saved, and loaded once per runtime."""
    import headstart as hs

    if modality == "image":
        from headstart.data.fashion_mnist import export_subset

        train = export_subset(os.path.join(folder, "train"), "train", 3, seed=0)
        est = hs.ImageClassifier(strategy="features", head_epochs=5, verbose=False, use_cache=False).fit(train)
    else:
        from headstart.data.tweets import export_split

        train, _, _ = export_split(os.path.join(folder, "tweets-train"), per_class_train=10, test_size=10)
        est = hs.TextClassifier(strategy="features", head_epochs=5, verbose=False, use_cache=False).fit(train)
    bundle = est.save(os.path.join(folder, f"{modality}.hs"))
    models = {}
    for runtime in runtimes:
        models[runtime] = hs.load(bundle, runtime=runtime)
        models[runtime].verbose = False
    return models


def inputs_for(modality: str, n: int, folder: str) -> tuple[list[str], list]:
    """(what `headstart predict` is given, the items the bare loop iterates over)."""
    if modality == "image":
        from headstart.data.fashion_mnist import export_subset
        from headstart.deploy.predict_inputs import iter_inputs

        test = export_subset(os.path.join(folder, "test"), "test", max(1, n // 10), seed=1)
        return [test], list(iter_inputs("image", [test]))
    from headstart.data.tweets import load_tweets

    texts = load_tweets()[0][:n]
    table = os.path.join(folder, "texts.csv")
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text"], *([t] for t in texts)])
    return [table], texts


def measure(modality: str, n: int, batch_size: int, repeats: int, runtimes: list[str]) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        models = fitted_models(modality, folder, runtimes)
        given, items = inputs_for(modality, n, folder)
        for runtime, est in models.items():
            bare_loop(est, items[:batch_size], batch_size)  # warm-up: first-call allocations, thread pools
            bare_s, ours_s = [], []
            for _ in range(repeats):
                seconds, scores = bare_loop(est, items, batch_size)
                bare_s.append(seconds)
                seconds, rows = ours(est, given, batch_size, folder)
                ours_s.append(seconds)
                assert rows == len(items) == len(scores)
            bare, mine = statistics.median(bare_s), statistics.median(ours_s)
            row = {"modality": modality, "runtime": runtime, "n": len(items), "batch_size": batch_size,
                   "bare_per_s": round(len(items) / bare, 2), "ours_per_s": round(len(items) / mine, 2),
                   "ratio": round(bare / mine, 3), "target": TARGET}
            print(f"{modality:5s} {runtime:5s} n={len(items):4d}  bare {row['bare_per_s']:7.1f}/s  "
                  f"headstart predict {row['ours_per_s']:7.1f}/s  ratio {row['ratio']:.2f} "
                  f"({'meets' if row['ratio'] >= TARGET else 'BELOW'} target {TARGET})", flush=True)
            results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images to predict (0 skips images)")
    parser.add_argument("--texts", type=int, default=512, help="texts to predict (0 skips texts)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtimes", default="torch,onnx")
    parser.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0: torch's default)")
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "predict.json"))
    args = parser.parse_args()
    if args.threads:  # a shared CPU: fewer threads than cores avoid OpenMP barriers stalling on busy cores
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the server process
        torch.set_num_threads(args.threads)
    tune_allocator()  # both sides share the process, so both get it (docs/environment.md: the allocator)
    os.environ.setdefault("HEADSTART_CACHE", tempfile.mkdtemp(prefix="hs-bench-cache-"))
    runtimes = [r for r in args.runtimes.split(",") if r]
    results = []
    if args.images:
        results += measure("image", args.images, args.batch_size, args.repeats, runtimes)
    if args.texts:
        results += measure("text", args.texts, args.batch_size, args.repeats, runtimes)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"results": results, "repeats": args.repeats, "cpu_count": os.cpu_count()}, f, indent=2)
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
