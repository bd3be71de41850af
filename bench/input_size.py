"""Resolution as a cost knob (issue 27): what does a smaller input size cost in accuracy and save in time?

Fashion-MNIST is 28 px grey; EfficientNet-Lite0's native size is 224 px, so every image is upsampled 8x and pays
the full forward pass. Per suite image task (bench/suite_data.py: real rows, the test rows drawn at random from the
rows training did not use) and per size, one fit of Lite0 with a fixed recipe (`--strategies`: `features`, the
frozen features and the solved logistic head; `two-stage` at `--epochs`), then its test accuracy and the wall
time of fit + predict (a fresh, empty feature cache for each fit: what a user's first fit pays).

With `--forward`, the bare forward pass of the backbone at each size, timed on a batch of random inputs (the
median of FORWARD_REPEATS), in this process: the arithmetic a size costs, without the decoding and loading that
the fits' wall times include and that the machine's other jobs make noisy.

With `--auto`, more fits per task with strategy `auto`, for each of `--auto-backbones` (`none`: no backbone, the
default a user gets): with no image size (`auto` may choose a smaller one), and at the native size given explicitly
(what `auto` fitted before it chose sizes), recording the candidates it scored (backbone @ size), the one it chose,
and the test accuracy and time of both.

Run:
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 PYTHONPATH=. .venv/bin/python bench/input_size.py \\
      --tasks fashion,fashion-coarse,fashion-permuted --sizes 224,160,128,96,64 --per-class 30
Results: bench/results/input_size.json (stamped with the measured code's state and the machine), written after
every fit, so a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bench modules beside this file
import suite_data  # noqa: E402
from auto_regret import run_fit, save  # noqa: E402
from suite import headstart_state, machine  # noqa: E402

import headstart as hs  # noqa: E402
from headstart._allocator import tune_allocator  # noqa: E402

console = Console(width=150)
FORWARD_BATCH, FORWARD_REPEATS = 32, 5


def warm_up(sizes: list[int]) -> None:
    """A forward and backward pass at every size first, so that no timed fit pays torch's one-time costs."""
    for size in sizes:
        bb = hs.create_backbone("efficientnet_lite0", image_size=size)
        bb.train()(torch.zeros(4, 3, size, size)).sum().backward()


def time_forward(name: str, sizes: list[int]) -> dict[int, float]:
    """Milliseconds per image of a bare inference forward pass at each size (median of FORWARD_REPEATS batches)."""
    out = {}
    for size in sizes:
        bb = hs.create_backbone(name, image_size=size).eval()
        x = torch.randn(FORWARD_BATCH, 3, size, size)
        times = []
        with torch.inference_mode():
            bb(x)  # untimed: the first pass at a shape is slower
            for _ in range(FORWARD_REPEATS):
                t = time.perf_counter()
                bb(x)
                times.append((time.perf_counter() - t) / FORWARD_BATCH)
        out[size] = round(1000 * float(sorted(times)[len(times) // 2]), 3)
        console.print(f"  forward {name} {size:>4} px: {out[size]:.2f} ms per image")
    return out


def run_sizes(task: str, strategy: str, args: argparse.Namespace, tmp: str, out: dict) -> None:
    """One fit per size of `args.backbone` with `strategy` on `task`, appended to out["rows"]."""
    train, test = suite_data.TASKS[task].split(args.per_class, args.seed, args.test_size)
    for size in args.sizes:
        args.image_size = size  # run_fit reads the size from args
        fit = run_fit("image", train, test, args, tmp, backbone=args.backbone, strategy=strategy)
        row = {"task": task, "strategy": strategy, "image_size": size, "accuracy": fit.get("accuracy"),
               "val_accuracy": fit.get("val_accuracy"), "fit_s": round(fit.get("fit_s", 0.0), 2),
               "eval_s": round(fit.get("eval_s", 0.0), 2), "seconds": round(fit["seconds"], 2),
               "error": fit.get("error")}
        out["rows"].append(row)
        save(out, args.json)
        console.print(f"  {task} {strategy:<10} {size:>4} px  acc {row['accuracy'] or float('nan'):.3f}  "
                      f"fit {row['fit_s']:.1f} s + predict {row['eval_s']:.1f} s" +
                      (f"  {row['error']}" if row["error"] else ""))


def run_auto(task: str, backbone: str | None, size: int | None, args: argparse.Namespace, tmp: str,
             out: dict) -> None:
    """`auto` with `backbone` (None: none given) at `size` (None: `auto` may choose): what it chose, how it did."""
    train, test = suite_data.TASKS[task].split(args.per_class, args.seed, args.test_size)
    args.image_size = size
    fit = run_fit("image", train, test, args, tmp, strategy="auto", **({"backbone": backbone} if backbone else {}))
    choice = (fit.get("measurements") or {}).get("backbone_choice", {})
    out["auto"].append({"task": task, "backbone_given": backbone, "image_size_given": size,
                        "accuracy": fit.get("accuracy"), "fit_s": round(fit.get("fit_s", 0.0), 2),
                        "eval_s": round(fit.get("eval_s", 0.0), 2), "chosen": choice.get("chosen"),
                        "chosen_size": choice.get("image_size"), "strategy": fit.get("chosen"),
                        "candidates": choice.get("candidates"), "reasons": fit.get("reasons"),
                        "error": fit.get("error")})
    save(out, args.json)
    a = out["auto"][-1]
    console.print(f"  {task} auto ({backbone or 'no backbone'}, {size or 'no'} size given): chose {a['chosen']} @ "
                  f"{a['chosen_size']} px, {a['strategy']}, acc "
                  f"{a['accuracy'] or float('nan'):.3f}, fit {a['fit_s']:.1f} s" +
                  (f"  {a['error']}" if a["error"] else ""))


def table(out: dict) -> None:
    for strategy in out["args"]["strategies"]:
        t = Table(title=f"{out['args']['backbone']}, strategy {strategy}: test accuracy / fit + predict seconds")
        t.add_column("task")
        for size in out["args"]["sizes"]:
            t.add_column(f"{size} px", justify="right")
        for task in out["args"]["tasks"]:
            cells = {r["image_size"]: r for r in out["rows"] if r["task"] == task and r["strategy"] == strategy}
            t.add_row(task, *("-" if s not in cells or cells[s]["accuracy"] is None
                              else f"{cells[s]['accuracy']:.3f} / {cells[s]['seconds']:.0f} s"
                              for s in out["args"]["sizes"]))
        console.print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="fashion,fashion-coarse,fashion-permuted")
    ap.add_argument("--sizes", default="224,160,128,96,64")
    ap.add_argument("--strategies", default="features,two-stage")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--test-size", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2, help="two-stage's fine-tuning epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--auto", action="store_true", help="also fit `auto`: see --auto-backbones")
    ap.add_argument("--auto-backbones", default="efficientnet_lite0", help="for --auto; `none`: no backbone given")
    ap.add_argument("--forward", action="store_true", help="also time the bare forward pass at each size")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "input_size.json"))
    args = ap.parse_args()
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.strategies = [s for s in args.strategies.split(",") if s]
    args.auto_backbones = [b for b in args.auto_backbones.split(",") if b]
    tuned = tune_allocator()
    warm_up(args.sizes)
    started = time.perf_counter()
    out: dict = {"benchmark": "input_size", "code": headstart_state(), "machine": machine(),
                 "args": {k: v for k, v in vars(args).items() if k != "image_size"}, "allocator_tuned": tuned,
                 "rows": [], "auto": []}
    if args.forward:
        out["forward_ms_per_image"] = time_forward(args.backbone, args.sizes)
        save(out, args.json)
    with tempfile.TemporaryDirectory(prefix="headstart-input-size-") as tmp:
        os.environ["HEADSTART_CACHE"] = os.path.join(tmp, "cache")
        for strategy in args.strategies:  # the cheap recipe on every task first: a stopped run keeps it
            for task in args.tasks:
                run_sizes(task, strategy, args, tmp, out)
        for task in args.tasks if args.auto else []:
            for name in args.auto_backbones:
                backbone = None if name == "none" else name
                run_auto(task, backbone, None, args, tmp, out)
                if backbone is not None:  # the same at its native size, given: what `auto` fitted before
                    run_auto(task, backbone, hs.create_backbone(backbone).spec.preprocess.size, args, tmp, out)
    out["total_seconds"] = round(time.perf_counter() - started, 1)
    save(out, args.json)
    table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
