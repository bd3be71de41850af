"""What does `auto`'s backbone choice cost, and what does it choose? Each run fits one suite task with `auto` and no
backbone, in its own process as a user would, and records the ranking's seconds (backbone_choice.py: building the
candidates, timing them, their features on the subsample, probe and LogME) against the whole fit's, the candidates'
scores and costs, the backbone chosen and its test accuracy. Target (issue 27): the ranking under 20% of the fit.
With `--explicit`, every candidate is also fitted by `auto` with that backbone given, on the same split: the test
accuracy of what the choice passed over (the choice should not ship a model worse than one it measured).

  PYTHONPATH=. python bench/backbone_choice.py                      # fashion 100/class at 64 px, tweets 64/class
  PYTHONPATH=. python bench/backbone_choice.py --runs newsgroups:32 --explicit

all-mpnet-base-v2 is unpacked into the run's cache before any timing (a user pays that once per machine, ~9 s).
Rows are appended to bench/results/backbone_choice.json under the measured code's commit, with the machine and the
arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from time_limit import code_state  # noqa: E402

RESULTS = os.path.join(HERE, "results", "backbone_choice.json")
DEFAULT_RUNS = ("fashion:100", "tweets:64")  # task:per_class; fashion at IMAGE_SIZE px
IMAGE_SIZE = 64  # the suite's size for Fashion-MNIST on this CPU
TEST_SIZE = 500


def child(task: str, per_class: int, seed: int, epochs: int, backbone: str | None) -> dict:
    """One `auto` fit, timed around `fit`, then scored on the test rows, in this process."""
    import suite_data
    import transformers

    import headstart as hs
    from headstart._allocator import tune_allocator
    from headstart.backbones import resolve_backbone
    from headstart.backbones.packaged import unpacked_model_folder

    tune_allocator()
    transformers.logging.disable_progress_bar()
    spec = suite_data.TASKS[task]
    train, test = spec.split(per_class, seed, TEST_SIZE)
    if spec.modality == "text":
        unpacked_model_folder(resolve_backbone("mpnet_base", "text"))  # once per machine: not the ranking's cost
    kind = hs.ImageClassifier if spec.modality == "image" else hs.TextClassifier
    extra = {"image_size": IMAGE_SIZE} if spec.modality == "image" else {}
    est = kind(backbone=backbone, strategy="auto", epochs=epochs, seed=seed, verbose=False, **extra)
    started = time.perf_counter()
    est.fit(train)
    fit_s = time.perf_counter() - started
    choice = est.advice_.measurements.get("backbone_choice", {}) if est.advice_ else {}
    ranking = choice.get("ranking_seconds", 0.0)
    return {"task": task, "per_class": per_class, "seed": seed, "backbone_given": backbone,
            "backbone": choice.get("chosen", backbone), "shipped_backbone": est.spec_.name,
            "fit_s": round(fit_s, 2), "ranking_s": ranking,
            "ranking_share": round(ranking / fit_s, 3), "subsample_rows": choice.get("rows"),
            "candidates": choice.get("candidates"), "strategy": est.advice_.strategy if est.advice_ else None,
            "shipped": est.strategy_["name"], "test_accuracy": round(est.evaluate(test)["accuracy"], 4),
            "reasons": list(est.advice_.reasons) if est.advice_ else []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", action="append", help="task:per_class (bench/suite_data.py tasks); repeatable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--explicit", action="store_true", help="also fit every candidate given explicitly")
    ap.add_argument("--json", default=RESULTS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        task, per_class, *given = args.child.split(":")
        print("RESULT " + json.dumps(child(task, int(per_class), args.seed, args.epochs, given[0] if given else None)))
        return 0
    runs = list(args.runs or DEFAULT_RUNS)
    stamp = {"code": code_state(), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
             "args": {"runs": runs, "seed": args.seed, "epochs": args.epochs, "image_size": IMAGE_SIZE,
                      "test_size": TEST_SIZE, "explicit": args.explicit}}
    rows = []
    for spec in runs:
        task, per_class = spec.split(":")
        todo = [None]  # the choice first, then (--explicit) each candidate it scored, given
        while todo:
            rows.append(run_child(task, per_class, args, todo.pop(0)))
            say(rows[-1], spec)
            append(args.json, {**rows[-1], **stamp, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # a stopped run
            if args.explicit and rows[-1]["backbone_given"] is None and "error" not in rows[-1]:  # keeps its rows
                todo += [c["name"] for c in rows[-1]["candidates"] or []]
    chosen = [r for r in rows if "error" not in r and r["backbone_given"] is None]
    print(f"ranking share of the fit: worst {max((r['ranking_share'] for r in chosen), default=float('nan')):.3f} "
          f"over {len(chosen)} run(s) (target < 0.20)")
    return 0


def append(path: str, row: dict) -> None:
    out = {"rows": []}
    if os.path.exists(path):
        with open(path) as f:
            out = json.load(f)
    out["rows"].append(row)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(path + ".tmp", path)


def run_child(task: str, per_class: str, args: argparse.Namespace, backbone: str | None = None) -> dict:
    env = {**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, __file__, "--seed", str(args.seed), "--epochs", str(args.epochs),
               "--child", f"{task}:{per_class}" + (f":{backbone}" if backbone else "")]
    with tempfile.TemporaryDirectory(prefix="headstart-choice-") as cache:  # a user's first fit: nothing cached
        done = subprocess.run(command, capture_output=True, text=True, env={**env, "HEADSTART_CACHE": cache})
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    return json.loads(line[7:]) if line else {"task": task, "backbone_given": backbone, "error": done.stderr[-2000:]}


def say(row: dict, spec: str) -> None:
    if "error" in row:
        print(f"{spec}: ERROR {row['error'][-400:]}", flush=True)
        return
    given = f" (given {row['backbone_given']})" if row["backbone_given"] else ""
    print(f"{row['task']} {row['per_class']}/class{given}: chose {row['backbone']}, shipped {row['shipped']} on "
          f"{row['shipped_backbone']}, test accuracy "
          f"{row['test_accuracy']:.3f}; fit {row['fit_s']:.1f} s, ranking {row['ranking_s']:.1f} s "
          f"({100 * row['ranking_share']:.1f}%) on {row['subsample_rows']} rows", flush=True)
    for c in row["candidates"] or []:
        print(f"    {c['name']:<20} probe {c['accuracy']:.3f} {c['interval']} LogME {c['logme']:.3f} cost "
              f"{c['relative_cost']:.2f}x {1000 * c['seconds_per_item']:.1f} ms/input", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
