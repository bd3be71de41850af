"""Two ways to tune a sentence encoder on a few labeled texts, each followed by the same logistic-regression head:
SetFit's contrastive tuning (methods/fewshot.contrastive_tune, the `setfit` plan's 4 passes) and the Hugging Face
Trainer's recipe (methods/text_finetune.finetune_encoder, 3 epochs), beside the untuned encoder. This is what
`quality="best"` races on held-out rows (headstart/budget.py); the script measures it on test rows, over several
training subsets of the suite's text tasks (bench/suite_data.py), to show whether either wins everywhere.

Per (task, subset): all-MiniLM-L6-v2 built fresh for each recipe, seeded with the subset; tuned on every training
text; the head solved on the tuned embeddings (probe.fit_probe: scaling and C by cross-validation); accuracy on
`--test-size` test texts (budget.check, the test rows as its held-out ones); the tuning's wall seconds. One
process; rows are written to the JSON as they finish.

  PYTHONPATH=. MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python bench/text_tuning.py \
      --tasks tweets,election --subsets 0,1,2,3,4,5 --per-class 64
Smoke: ... bench/text_tuning.py --tasks tweets --subsets 0 --per-class 8 --test-size 60 --json /tmp/tt.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np
import suite_data
import torch
from suite import headstart_state

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def measure(task: str, subset: int, per_class: int, test_size: int) -> dict:
    import headstart as hs
    from headstart.backbones import create_backbone
    from headstart.budget import Labeled, check
    from headstart.methods.fewshot import contrastive_tune
    from headstart.methods.text_finetune import finetune_encoder
    from headstart.strategies import SetFit

    train_csv, test_csv = suite_data.TASKS[task].split(per_class, subset, test_size)
    reader = hs.TextClassifier(verbose=False, seed=subset, batch_size=32)  # check() reads its seed and batch
    train = reader._load(train_csv)
    test = reader._align(reader._load(test_csv), list(train.classes))
    n_classes = len(train.classes)
    recipes = {
        "untuned": None,
        "setfit": lambda b: contrastive_tune(b, train.items, train.targets, epochs=SetFit.epochs, seed=subset,
                                             verbose=False),
        "trainer_recipe": lambda b: finetune_encoder(b, train.items, train.targets, epochs=3, seed=subset,
                                                     verbose=False, n_classes=n_classes),
    }
    row = {"task": task, "subset": subset, "per_class": per_class, "classes": n_classes, "n_test": len(test.items)}
    for name, tune in recipes.items():
        backbone = create_backbone("minilm_l6")
        started = time.perf_counter()
        if tune is not None:
            tune(backbone)
        seconds = time.perf_counter() - started
        # the head and its score as quality="best" checks a candidate, with the test rows as the held-out ones
        scored = check(reader, backbone, Labeled(train.items, train.targets), Labeled(test.items, test.targets),
                       n_classes)
        row[name] = {"accuracy": scored["accuracy"], "tuning_seconds": round(seconds, 2)}
    return row


def summary(rows: list[dict]) -> dict:
    """Per task: mean accuracies, the recipe's mean gain over SetFit's tuning and on how many subsets it won."""
    out = {}
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        gains = np.array([r["trainer_recipe"]["accuracy"] - r["setfit"]["accuracy"] for r in mine])
        out[task] = {"subsets": len(mine),
                     **{f"{k}_mean": round(float(np.mean([r[k]["accuracy"] for r in mine])), 4)
                        for k in ("untuned", "setfit", "trainer_recipe")},
                     "recipe_minus_setfit_points": round(100 * float(gains.mean()), 2),
                     "recipe_wins": int((gains > 0).sum()), "setfit_wins": int((gains < 0).sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="tweets,election")
    ap.add_argument("--subsets", default="0,1,2,3,4,5")
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--json", default=os.path.join(RESULTS, "text_tuning.json"))
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = {"benchmark": "text_tuning", "code": headstart_state(), "args": vars(args),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                       "load_avg_at_start": os.getloadavg()},
           "rows": []}
    for task in args.tasks.split(","):
        for subset in (int(s) for s in args.subsets.split(",")):
            out["rows"].append(measure(task, subset, args.per_class, args.test_size))
            out["summary"] = summary(out["rows"])
            print(json.dumps(out["rows"][-1]), flush=True)
            with open(args.json + ".tmp", "w") as f:
                json.dump(out, f, indent=1)
            os.replace(args.json + ".tmp", args.json)
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
