"""Benchmark: the streamed head stage against the in-memory solver on the suite's classification tasks.

The streamed solver (headstart/stream.py) runs only from STREAM_MIN_ROWS training rows, where the in-memory one
no longer fits; where both fit they must agree. Each task and subset is fitted twice with `strategy="features"`
on the same cached features: as shipped (in memory), and with stream.STREAM_MIN_ROWS lowered to 1 so the head
stage and the final refit stream (rows read from the cache's shards in batches, L-BFGS over passes). Reported:
test accuracy of each, the chosen scaling and C, and how many test predictions differ.

Run: MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python bench/stream_vs_memory.py
     [--tasks fashion,fashion-coarse,tweets,election] [--subsets 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import suite_data  # noqa: E402  (bench/ on the path first)
from time_limit import code_state  # noqa: E402

import headstart as hs  # noqa: E402
from headstart import stream  # noqa: E402
from headstart._allocator import tune_allocator  # noqa: E402

DEFAULT_THRESHOLD = stream.STREAM_MIN_ROWS
SPLITS = {  # task: (split function, training rows per class, estimator, its options) as the suite sizes them
    "fashion": (suite_data.fashion, 100, hs.ImageClassifier, {"image_size": 64}),
    "fashion-coarse": (suite_data.fashion_coarse, 100, hs.ImageClassifier, {"image_size": 64}),
    "fashion-permuted": (suite_data.fashion_permuted, 100, hs.ImageClassifier, {"image_size": 64}),
    "tweets": (suite_data.tweets, 64, hs.TextClassifier, {}),
    "election": (suite_data.election, 64, hs.TextClassifier, {}),
}


def one(task: str, subset: int, cache: str) -> dict:
    split, per_class, kind, extra = SPLITS[task]
    train, test = split(per_class, subset, 1000)
    out = {"task": task, "subset": subset, "per_class": per_class}
    predictions = {}
    for name, threshold in (("memory", DEFAULT_THRESHOLD), ("streamed", 1)):
        stream.STREAM_MIN_ROWS = threshold
        started = time.perf_counter()
        try:
            est = kind(strategy="features", seed=0, verbose=False, cache_dir=cache, **extra).fit(train)
        finally:
            stream.STREAM_MIN_ROWS = DEFAULT_THRESHOLD
        seconds = time.perf_counter() - started
        head = est.history_[0]
        out[name] = {"test_accuracy": round(est.evaluate(test)["accuracy"], 4), "solver": head["solver"],
                     "scaling": head["probe"]["scaling"], "C": head["probe"]["C"],
                     "fit_seconds": round(seconds, 2), "refit": est.metrics_.get("refit")}
        predictions[name] = np.array(est.predict(test), dtype=object)
    out["predictions_differing"] = int((predictions["memory"] != predictions["streamed"]).sum())
    out["test_rows"] = len(predictions["memory"])
    return out


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    result = {"benchmark": "stream_vs_memory", "code": code_state(), "args": vars(args),
              "machine": {"cpu_count": os.cpu_count(), "system": platform.platform()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(args.json + ".tmp", args.json)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="fashion,fashion-coarse,tweets,election")
    p.add_argument("--subsets", type=int, default=3)
    p.add_argument("--json", default=os.path.join(HERE, "results", "stream_vs_memory.json"))
    args = p.parse_args()
    tune_allocator()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for task in args.tasks.split(","):
            for subset in range(args.subsets):
                rows.append(one(task, subset, cache))
                r = rows[-1]
                print(f"{task} subset {subset}: memory {r['memory']['test_accuracy']} streamed "
                      f"{r['streamed']['test_accuracy']} ({r['predictions_differing']} of {r['test_rows']} "
                      "predictions differ)", flush=True)
                write(args, rows)  # after every fit: a run stopped part-way keeps what it measured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
