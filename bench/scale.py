"""Benchmark: the streamed head stage (headstart/stream.py) from 10^5 to 10^7 feature rows, on 1 and 2 processes.

No images: synthetic feature rows are written straight into the feature cache's format (`shard-<id>.npy` float32
rows beside `shard-<id>.json` digests, at most SHARD_ROWS a shard), drawn from Gaussian classes of identity
covariance around fixed means with equal priors. There the Bayes rule is linear (argmax_k mu_k.x - |mu_k|^2 / 2)
and logistic regression is well specified, so the held-out split's Bayes accuracy is the known optimum the head
is measured against. The rows are 64 features wide, not Lite0's 1,280 (10^7 x 1,280 float32 would be 51 GB of
disk and hours of passes on this CPU); memory per batch is fixed in bytes (cache.BATCH_BYTES), not rows, so the
width changes the time per row, not the memory.

Each run is a fresh process (or two, under `torchrun --standalone --nproc_per_node 2`): the whole head stage of
stream.py (statistics pass, C search on the 2,000-row subsample, streamed L-BFGS, a scoring pass), each process on
its own contiguous share of the rows (ShardRows.split), exchanging only sums and the subsample. Each reports its
peak RSS over the head stage (VmHWM: anonymous and mapped file pages alike; `import headstart` alone is ~0.8 GB, so
its RSS after the imports is reported too) and its time from the first read to the last score (per million rows;
the ~15-20 s of imports and process start are `startup_seconds`). Target: peak RSS flat in the rows and under
2 GB per process at 10^7. On a 2-core machine two processes each run one thread, one process one thread.

Run: MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_NUM_THREADS=1 .venv/bin/python bench/scale.py
     [--sizes 100000,1000000,10000000] [--processes 1,2] [--dim 64] [--classes 10] [--data /tmp/hs-scale]
     [--fashion 6000 (the real tie-in: 60,000 Fashion-MNIST photos through Lite0 @64 px, streamed head)]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHARD_ROWS = 1_000_000
TEST_ROWS = 200_000
SEPARATION = 0.3  # spread of the class means: Bayes accuracy 0.78 at 10 classes and 64 features (0.25: 0.67)


def class_means(classes: int, dim: int) -> np.ndarray:
    return np.random.default_rng(12345).normal(0.0, SEPARATION, (classes, dim)).astype(np.float32)


def draw(n: int, means: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, len(means), n)
    return (means[y] + rng.standard_normal((n, means.shape[1]), dtype=np.float32)).astype(np.float32), y


def bayes_predict(x: np.ndarray, means: np.ndarray) -> np.ndarray:
    return np.argmax(x @ means.T - 0.5 * (means**2).sum(1), axis=1)


def write_rows(folder: str, rows: int, means: np.ndarray, seed: int) -> None:
    """`rows` training rows in the cache's format, a shard at a time (this process never holds more), and their
    labels in `labels.npy`; skipped when a complete copy is already there."""
    done = os.path.join(folder, "complete.json")
    if os.path.exists(done):
        return
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    labels = []
    for s, start in enumerate(range(0, rows, SHARD_ROWS)):
        x, y = draw(min(SHARD_ROWS, rows - start), means, rng)
        np.save(os.path.join(folder, f"shard-{s:04d}.npy"), x)
        with open(os.path.join(folder, f"shard-{s:04d}.json"), "w") as f:
            json.dump({"digests": [f"synthetic-{start + i}" for i in range(len(y))]}, f)
        labels.append(y.astype(np.int16))
    np.save(os.path.join(folder, "labels.npy"), np.concatenate(labels))
    with open(done, "w") as f:
        json.dump({"rows": rows}, f)


def peak_rss_mib() -> float:
    """This process's peak resident memory since its exec (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    over exec from the forked parent (measured here: a child of this script, which had just written 10^7 rows,
    reported 1,946 MiB right after imports that take 817)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """One process of a run: the streamed head stage on its share of the rows; rank 0 writes every process's
    numbers to --result."""
    import torch

    from headstart._allocator import tune_allocator
    from headstart.cache import ShardRows
    from headstart.distributed import gather_small, my_share, num_processes, rank
    from headstart.heads import HeadConfig, build_head
    from headstart.stream import fit_streamed_probe, streamed_scores

    tune_allocator()
    state_rss = peak_rss_mib()  # torch, headstart and its imports
    started = time.perf_counter()
    shards = sorted(os.path.join(args.folder, f) for f in os.listdir(args.folder) if f.endswith(".npy")
                    and f.startswith("shard-"))
    everything = ShardRows.of_shards(shards)
    source, share = everything.split(rank(), num_processes()), my_share(len(everything))  # the same cut
    labels = np.load(os.path.join(args.folder, "labels.npy"), mmap_mode="r")
    # int16, as stored and as plan_runner.streamed_rows keeps them (stream.batch_targets widens a batch at a time);
    # copied out, and the mapping closed so its pages leave this process
    targets = np.array(labels[share.start:share.stop], dtype=np.int16)
    del labels
    head = build_head(HeadConfig(), source.dim, args.classes)
    chosen = fit_streamed_probe(head, source, targets, args.classes, seed=0)
    fitted = time.perf_counter() - started
    train = streamed_scores(head, source, targets)
    peak = peak_rss_mib()  # the head stage's: before this script draws its own 200,000 test rows
    means = class_means(args.classes, source.dim)
    x_test, y_test = draw(TEST_ROWS, means, np.random.default_rng(777))
    with torch.no_grad():
        test_accuracy = float((head(torch.as_tensor(x_test)).argmax(-1).numpy() == y_test).mean())
    bayes = float((bayes_predict(x_test, means) == y_test).mean())
    mine = {"rank": rank(), "rows": len(source), "peak_rss_mib": round(peak, 1),
            "rss_after_imports_mib": round(state_rss, 1), "seconds": round(time.perf_counter() - started, 2),
            "fit_seconds": round(fitted, 2), "most_rows_read": source.most_rows_read}
    everyone = gather_small(mine)
    if rank() == 0:
        with open(args.result, "w") as f:
            json.dump({"processes": everyone, "probe": chosen, "train_accuracy": round(train["accuracy"], 5),
                       "test_accuracy": round(test_accuracy, 5), "bayes_accuracy": round(bayes, 5)}, f)


def real_child(args: argparse.Namespace) -> None:
    """The whole `features` fit on real Fashion-MNIST photos (Lite0 at 64 px), the head stage and refit streamed
    (threshold lowered to 1 row), in this process: the synthetic numbers tied to a real pipeline."""
    import headstart as hs
    from headstart import stream
    from headstart._allocator import tune_allocator

    tune_allocator()
    if not args.in_memory:
        stream.STREAM_MIN_ROWS = 1
    started = time.perf_counter()
    clf = hs.ImageClassifier(strategy="features", image_size=64, seed=0, verbose=False,
                             cache_dir=args.cache).fit(args.folder)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    head = clf.history_[0]
    out = {"rows": clf.metrics_["refit"]["rows"], "peak_rss_mib": round(peak, 1),
           "fit_seconds": round(seconds, 1), "head_seconds": head["seconds"], "solver": head["solver"],
           "probe": head["probe"], "refit": clf.metrics_.get("refit"),
           "test_accuracy": round(clf.evaluate(args.test)["accuracy"], 4)}
    with open(args.result, "w") as f:
        json.dump(out, f)


def run_real(per_class: int, args: argparse.Namespace) -> dict:
    from headstart.data.fashion_mnist import export_subset

    root = os.path.join(args.data, f"fashion-{per_class}")
    train = export_subset(os.path.join(root, "train"), "train", per_class, seed=0)
    test = export_subset(os.path.join(root, "test"), "test", 100, seed=1)
    result = os.path.join(root, "result.json")
    cache = os.path.join(root, "cache")
    if not args.in_memory:  # every photo embedded: the cost of the real pipeline
        shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--real-child", "--folder", train, "--test", test,
           "--cache", cache, "--result", result] + (["--in-memory"] if args.in_memory else [])
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if proc.returncode != 0:
        return {"fashion_per_class": per_class, "error": proc.stderr[-2000:]}
    with open(result) as f:
        return {"fashion_per_class": per_class, "wall_seconds": round(time.perf_counter() - started, 1),
                "load_average": os.getloadavg()[0], **json.load(f)}


def run(rows: int, processes: int, folder: str, args: argparse.Namespace) -> dict:
    result = os.path.join(args.data, f"result-{rows}-{processes}.json")
    script = [os.path.abspath(__file__), "--child", "--folder", folder, "--classes", str(args.classes),
              "--result", result]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(processes), *script]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"rows": rows, "processes_asked": processes, "error": proc.stderr[-2000:]}
    with open(result) as f:
        out = json.load(f)
    seconds = max(p["seconds"] for p in out["processes"])  # from the data's first read to the last score
    # the machine's 1-minute load average before and after: times mean little when other jobs share the cores
    return {"rows": rows, "processes_asked": processes, "wall_seconds": round(wall, 2),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "startup_seconds": round(wall - seconds, 2), "seconds_per_million_rows": round(seconds / (rows / 1e6), 2),
            "peak_rss_mib_max": max(p["peak_rss_mib"] for p in out["processes"]), **out}


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for processes in sorted({r["processes_asked"] for r in rows}):
        mine = [r for r in rows if r["processes_asked"] == processes and "error" not in r]
        sizes = [r["rows"] for r in mine]
        left.plot(sizes, [r["peak_rss_mib_max"] for r in mine], "o-", label=f"{processes} process(es)")
        right.plot(sizes, [r["seconds_per_million_rows"] for r in mine], "o-", label=f"{processes} process(es)")
    left.axhline(2048, color="grey", ls="--", label="target 2 GB")
    for ax, title in ((left, "peak RSS per process (MiB)"), (right, "wall seconds per million rows")):
        ax.set_xscale("log")
        ax.set_xlabel("training rows")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100000,1000000,10000000")
    p.add_argument("--processes", default="1,2")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--data", default="/tmp/hs-scale")
    p.add_argument("--json", default=os.path.join(HERE, "results", "scale.json"))
    p.add_argument("--fashion", type=int, default=0, help="also a real run: this many Fashion-MNIST photos "
                   "per class (6000: the whole 60,000), results under `real` in the JSON")
    p.add_argument("--in-memory", action="store_true", help="with --fashion: the in-memory solver on the features "
                   "an earlier --fashion run cached (its reference), under `real_in_memory`")
    p.add_argument("--child", action="store_true")
    p.add_argument("--real-child", action="store_true")
    p.add_argument("--test")
    p.add_argument("--cache")
    p.add_argument("--folder")
    p.add_argument("--result")
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    if args.real_child:
        real_child(args)
        return 0
    sys.path.insert(0, HERE)
    from time_limit import code_state  # the commit of the code `import headstart` resolves to

    means = class_means(args.classes, args.dim)
    rows_out = []
    for rows in (int(s) for s in args.sizes.split(",") if s):  # smallest first: a run cut short keeps the small
        folder = os.path.join(args.data, f"rows-{rows}-dim-{args.dim}-classes-{args.classes}")
        write_rows(folder, rows, means, seed=rows)
        for processes in (int(n) for n in args.processes.split(",")):
            row = run(rows, processes, folder, args)
            rows_out.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("probe", "processes")}), flush=True)
            out = {"benchmark": "scale", "code": code_state(), "machine": {"cpu_count": os.cpu_count(),
                   "system": platform.platform()}, "args": {k: v for k, v in vars(args).items()
                                                           if k not in ("child", "folder", "result")},
                   "feature_dim": args.dim, "note": "synthetic Gaussian classes; optimum = Bayes accuracy",
                   "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows_out}
            os.makedirs(os.path.dirname(args.json), exist_ok=True)
            with open(args.json + ".tmp", "w") as f:
                json.dump(out, f, indent=1)
            os.replace(args.json + ".tmp", args.json)
            plot(rows_out, os.path.splitext(args.json)[0] + ".png")
    if args.fashion:  # added to the results file as it is (`--sizes ''` keeps the synthetic rows already there)
        real = {**run_real(args.fashion, args), "code": code_state(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        print(json.dumps({k: v for k, v in real.items() if k not in ("probe", "refit")}), flush=True)
        out = {"benchmark": "scale"}
        if os.path.exists(args.json):
            with open(args.json) as f:
                out = json.load(f)
        out["real_in_memory" if args.in_memory else "real"] = real
        with open(args.json + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
