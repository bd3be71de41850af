"""Benchmark: headstart `auto` against the tools a user would pick instead, on the same weights and the same splits.

Images (packaged EfficientNet-Lite0 ImageNet weights, Fashion-MNIST fmN = N images per class): headstart `auto`;
fastai `vision_learner(...).fine_tune(epochs)` with its defaults on the same timm body and weights; scikit-learn
logistic regression on the same frozen features (a bare torch loop extracts them); the same architecture trained
from scratch (headstart, `pretrained=False`, strategy `full`).
Texts (packaged all-MiniLM-L6-v2, deduplicated tweets, tweetsN = N per class): headstart `auto`; SetFit; the
Hugging Face Trainer fine-tuning `AutoModelForSequenceClassification`; TF-IDF + logistic regression. One more tool,
not run here by default: `minilm-logreg`, logistic regression on frozen MiniLM sentence embeddings (time_budget.py).

Splits are written once and every tool reads the same train/test files. Each tool runs in its own process (one job
per process; peak RSS is that process's, its data-loading workers included) with the same allocator and offline
environment. Wall time is fit + prediction on the test set, after imports. Reported per run: test accuracy,
macro-F1, wall time, peak RSS, and headstart's wall time over each anchor's.
Target: headstart `auto` >= the best anchor's accuracy - 0.5 points, in <= 0.5x that anchor's wall time.

`--repeats N` runs every setting on N training subsets (seeds seed..seed+N-1, the test subset drawn with them);
the table and the verdict then use each tool's mean, and the JSON keeps every run. One split of 600 test tweets
has a standard error of about 2 points, so a single repeat cannot tell most of these tools apart.

Anchors are optional extras (`pip install -e .[anchors]`). Run (results are saved after every run):
  .venv/bin/python bench/anchors.py --settings fm10,tweets8,fm100,tweets64 --image-size 64 --epochs 3 \
      --test-per-class 100 --tweets-test 600 --setfit-iterations 5 --repeats 3   # docs/evidence.md's table
  .venv/bin/python bench/anchors.py --settings fm1000 --image-size 64 --json bench/results/anchors_fm1000.json
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from suite import headstart_state

ACC_MARGIN, TIME_TARGET = 0.005, 0.5
IMAGE_TOOLS = ("headstart-auto", "fastai", "sklearn-logreg", "scratch")
TEXT_TOOLS = ("headstart-auto", "setfit", "hf-trainer", "tfidf-logreg")
CHILD_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "HF_HUB_OFFLINE": "1",
             "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "WANDB_DISABLED": "true"}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ---------------------------------------------------------------- data, shared by every tool

def image_files(folder: str) -> tuple[list[str], list[str]]:
    paths = sorted(glob.glob(os.path.join(folder, "*", "*.png")))
    return paths, [os.path.basename(os.path.dirname(p)) for p in paths]


def text_rows(path: str) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def make_split(setting: str, args: argparse.Namespace, root: str, seed: int) -> dict:
    from headstart.data.fashion_mnist import export_subset
    from headstart.data.tweets import export_split

    dest = os.path.join(root, f"{setting}-{seed}")
    if setting.startswith("fm"):
        n = int(setting[2:])
        train = export_subset(os.path.join(dest, "train"), "train", n, seed=seed)
        test = export_subset(os.path.join(dest, "test"), "test", args.test_per_class, seed=seed + 1)
        return {"setting": setting, "modality": "image", "train": train, "test": test, "seed": seed,
                "description": f"Fashion-MNIST, {n}/class train, {args.test_per_class}/class test"}
    if setting.startswith("tweets"):
        n = int(setting[6:])
        train, test, _ = export_split(dest, n, args.tweets_test, seed=seed)
        return {"setting": setting, "modality": "text", "train": train, "test": test, "seed": seed,
                "description": f"tweets, {n}/class train, {args.tweets_test} test (corpus class mix)"}
    raise SystemExit(f"unknown setting '{setting}': use fmN or tweetsN")


def scores(truth: list[str], predicted: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, average="macro", labels=sorted(set(truth))))}


# ---------------------------------------------------------------- the tools; each returns test predictions

def run_headstart(job: dict, args: argparse.Namespace, pretrained: bool = True) -> tuple[list[str], dict]:
    import headstart as hs

    given = job.get("headstart", {})  # keyword arguments that replace these (bench/time_budget.py: quality, limit)
    if job["modality"] == "image":
        clf = hs.ImageClassifier(**{"backbone": "efficientnet_lite0", "strategy": "auto" if pretrained else "full",
                                    "pretrained": pretrained, "epochs": args.epochs, "image_size": args.image_size,
                                    "seed": args.seed, "verbose": False, **given})
        clf.fit(job["train"])
        fitted = time.perf_counter()
        preds = clf.predict(image_files(job["test"])[0])
    else:
        clf = hs.TextClassifier(**{"backbone": "minilm_l6", "strategy": "auto", "epochs": args.epochs,
                                   "seed": args.seed, "verbose": False, **given})
        clf.fit(job["train"])
        fitted = time.perf_counter()
        preds = clf.predict(text_rows(job["test"])[0])
    info = {"predict_s": time.perf_counter() - fitted, "backbone": clf.spec_.name}  # the rest of the time is fit
    if clf.advice_ is not None:
        info.update(chosen=clf.advice_.strategy, reasons=clf.advice_.reasons)
    return [str(p) for p in preds], info


def lite0_body(pretrained: bool = True):
    """The very module headstart fine-tunes: timm EfficientNet-Lite0 with the packaged ImageNet weights, no top.
    fastai calls it as an `arch` and cuts it before its global pool (its own `create_body` rule). Its weights go
    back to PyTorch's default layout: headstart keeps image backbones channels-last, an optimisation of its own that
    neither fastai (`to_channelslast` is opt-in) nor a plain torch loop applies by default."""
    import torch

    import headstart as hs

    body = hs.create_backbone("efficientnet_lite0", pretrained=pretrained).body
    return body.to(memory_format=torch.contiguous_format)


def run_fastai(job: dict, args: argparse.Namespace) -> tuple[list[str], dict]:
    from fastai.vision.all import ImageDataLoaders, Normalize, Resize, vision_learner

    # Not in fastai's model_meta, so fastai adds no normalisation: give it the weights' own ([-1, 1]).
    dls = ImageDataLoaders.from_folder(job["train"], valid_pct=0.2, seed=args.seed, item_tfms=Resize(args.image_size),
                                       batch_tfms=[Normalize.from_stats([0.5] * 3, [0.5] * 3)])
    learn = vision_learner(dls, lite0_body)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(args.epochs)
        paths = image_files(job["test"])[0]
        probs, _ = learn.get_preds(dl=dls.test_dl(paths))
    return [str(learn.dls.vocab[i]) for i in probs.argmax(1).tolist()], {"num_workers": dls.train.num_workers}


def frozen_features(body, paths: list[str], size: int, batch: int = 64) -> np.ndarray:
    import torch
    from PIL import Image

    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            imgs = [Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC) for p in paths[i:i + batch]]
            x = torch.from_numpy(np.stack([np.asarray(im) for im in imgs])).permute(0, 3, 1, 2).float() / 255
            out.append(body((x - 0.5) / 0.5).numpy())
    return np.concatenate(out)


def run_sklearn_logreg(job: dict, args: argparse.Namespace) -> tuple[list[str], dict]:
    body = lite0_body().eval()
    train_paths, train_labels = image_files(job["train"])
    x_train = frozen_features(body, train_paths, args.image_size)
    x_test = frozen_features(body, image_files(job["test"])[0], args.image_size)
    return logreg(x_train, train_labels, x_test), {}


def logreg(x_train: np.ndarray, labels: list[str], x_test: np.ndarray) -> list[str]:
    """scikit-learn's logistic regression on frozen features, standardised first, as its docs advise."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, labels)
    return [str(p) for p in model.predict(x_test)]


def run_minilm_logreg(job: dict, args: argparse.Namespace) -> tuple[list[str], dict]:
    """Logistic regression on frozen MiniLM sentence embeddings (sentence-transformers' `encode`, its default
    mean pooling and normalisation): the texts' counterpart of sklearn-logreg. Not in TEXT_TOOLS: time_budget.py."""
    from sentence_transformers import SentenceTransformer

    from headstart.backbones.text import packaged_minilm_path

    texts, labels = text_rows(job["train"])
    model = SentenceTransformer(packaged_minilm_path())
    return logreg(model.encode(texts), labels, model.encode(text_rows(job["test"])[0])), {}


def run_setfit(job: dict, args: argparse.Namespace) -> tuple[list[str], dict]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from headstart.backbones.text import packaged_minilm_path

    texts, labels = text_rows(job["train"])
    model = SetFitModel.from_pretrained(packaged_minilm_path())
    # SetFit's default sampling pairs every example with every other: quadratic, hours here at 64+ per class.
    # num_iterations=k draws k positive and k negative pairs per example, as the SetFit paper did (k=20).
    extra = {"num_iterations": args.setfit_iterations} if args.setfit_iterations else {}
    targs = TrainingArguments(seed=args.seed, report_to="none", save_strategy="no", show_progress_bar=False,
                              output_dir=tempfile.mkdtemp(prefix="setfit-"), **extra)
    trainer = Trainer(model=model, args=targs, train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
    trainer.train()
    preds = model.predict(text_rows(job["test"])[0], as_numpy=True)
    return [str(p) for p in preds], {"setfit_args": {"num_iterations": args.setfit_iterations or None}}


def run_hf_trainer(job: dict, args: argparse.Namespace) -> tuple[list[str], dict]:
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from headstart.backbones.text import packaged_minilm_path

    path = packaged_minilm_path()
    texts, labels = text_rows(job["train"])
    classes = sorted(set(labels))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(classes), use_safetensors=True)

    def encode(rows: dict) -> dict:
        return tok(rows["text"], truncation=True, max_length=256)

    train = Dataset.from_dict({"text": texts, "label": [classes.index(c) for c in labels]}).map(encode, batched=True)
    test = Dataset.from_dict({"text": text_rows(job["test"])[0]}).map(encode, batched=True)
    # The Trainer's defaults (lr 5e-5, batch 8, linear decay) but for epochs, shared with the other tools.
    targs = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="hf-"), num_train_epochs=args.epochs, seed=args.seed,
                              save_strategy="no", report_to="none", disable_tqdm=True, logging_strategy="no")
    trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    logits = trainer.predict(test.remove_columns(["text"])).predictions
    return [classes[i] for i in np.asarray(logits).argmax(1)], {}


def run_tfidf(job: dict, args: argparse.Namespace) -> tuple[list[str], dict]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    texts, labels = text_rows(job["train"])
    # The text demo's baseline: word 1-2 grams, C picked by cross-validation on the training tweets only.
    pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=3000))
    folds = max(2, min(5, min(labels.count(c) for c in set(labels))))
    model = GridSearchCV(pipe, {"logisticregression__C": [0.3, 1, 3, 10, 30, 100]}, scoring="accuracy",
                         cv=StratifiedKFold(folds, shuffle=True, random_state=args.seed)).fit(texts, labels)
    return [str(p) for p in model.predict(text_rows(job["test"])[0])], {"C": model.best_params_}


TOOLS = {"headstart-auto": run_headstart, "fastai": run_fastai, "sklearn-logreg": run_sklearn_logreg,
         "scratch": lambda job, args: run_headstart(job, args, pretrained=False), "setfit": run_setfit,
         "hf-trainer": run_hf_trainer, "tfidf-logreg": run_tfidf, "minilm-logreg": run_minilm_logreg}


def child_main(args: argparse.Namespace) -> int:
    """One tool on one split, in this process only; writes its measurements to --child-out."""
    import torch

    job = json.loads(args.child_job)
    truth = image_files(job["test"])[1] if job["modality"] == "image" else text_rows(job["test"])[1]
    started = time.perf_counter()
    preds, info = TOOLS[job["tool"]](job, args)
    seconds = time.perf_counter() - started
    # Linux reports KiB; the children are fastai's data-loading workers, if any.
    kib = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    out = {**scores(truth, preds), "seconds": seconds, "peak_rss_mb": kib / 1024, "n_test": len(truth),
           "torch_threads": torch.get_num_threads(), **info}
    with open(args.child_out, "w") as f:
        json.dump(out, f, default=str)
    return 0


# ---------------------------------------------------------------- the parent: splits, one process per run, report

def run_child(tool: str, split: dict, args: argparse.Namespace, tmp: str, extra: dict | None = None,
              models: str | None = None) -> dict:
    """`extra` joins the job (its "run" names the files: several runs of one tool); `models`: a folder of unpacked
    packaged weights that the cold cache links to (unpacking is once per machine, not a cost of the fit)."""
    name = f"{split['setting']}-{split['seed']}-{(extra or {}).get('run', tool)}"
    out = os.path.join(tmp, f"{name}.json")
    job = json.dumps({**{k: split[k] for k in ("modality", "train", "test")}, "tool": tool, **(extra or {})})
    flags = ["--image-size", str(args.image_size), "--epochs", str(args.epochs), "--seed", str(split["seed"]),
             "--setfit-iterations", str(args.setfit_iterations)]
    cache = tempfile.mkdtemp(prefix="cache-", dir=tmp)
    if models:
        os.symlink(models, os.path.join(cache, "models"))
    env = {**os.environ, **CHILD_ENV, "HEADSTART_CACHE": cache}  # cold cache
    log = os.path.join(tmp, f"{name}.log")
    started = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *flags, "--child-job", job,
                               "--child-out", out], env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=args.run_timeout, check=False)
    process_s = time.perf_counter() - started
    if proc.returncode != 0 or not os.path.exists(out):
        with open(log) as f:
            tail = f.read()[-600:]
        return {"error": f"exit {proc.returncode}: {tail}", "process_s": process_s}
    with open(out) as f:
        return {**json.load(f), "process_s": process_s}


def aggregate(repeats: list[dict]) -> dict:
    """Per tool, the mean over repeats (each repeat: another training subset and seed) of accuracy, macro-F1 and
    wall time, the spread of accuracy, and the largest peak RSS. One repeat: its numbers as they are."""
    if len(repeats) == 1:
        return dict(repeats[0])
    out = {}
    for tool in dict.fromkeys(t for rep in repeats for t in rep):
        ok = [rep[tool] for rep in repeats if tool in rep]  # while a repeat runs, its later tools are missing
        failed = [r["error"] for r in ok if "error" in r]
        if failed:  # a tool that failed once has no comparable mean
            out[tool] = {"error": failed[0]}
            continue
        acc = np.array([r["accuracy"] for r in ok])
        out[tool] = {"accuracy": float(acc.mean()), "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                     "accuracy_each": acc.round(4).tolist(),
                     "macro_f1": float(np.mean([r["macro_f1"] for r in ok])),
                     "seconds": float(np.mean([r["seconds"] for r in ok])),
                     "peak_rss_mb": float(max(r["peak_rss_mb"] for r in ok)), "repeats": len(ok)}
        if "chosen" in ok[0]:
            out[tool]["chosen"] = [r.get("chosen") for r in ok]
    return out


def verdict(runs: dict) -> dict:
    """Ratios of headstart's wall time to each anchor's, and the target against the most accurate anchor."""
    ours = runs.get("headstart-auto", {})
    anchors = {k: v for k, v in runs.items() if k != "headstart-auto" and "accuracy" in v}
    if "accuracy" not in ours or not anchors:
        return {"pass": False}
    ratios = {k: ours["seconds"] / v["seconds"] for k, v in anchors.items()}
    best = max(anchors, key=lambda k: anchors[k]["accuracy"])
    # accuracies are counts over the same test sets, so a gap of exactly half a point (9 of 1,800 tweets) must not
    # fail on the last bit of a float (-0.5000000000000004)
    gap = round(100 * (ours["accuracy"] - anchors[best]["accuracy"]), 9)
    ok_acc, ok_time = gap >= -100 * ACC_MARGIN, ratios[best] <= TIME_TARGET
    return {"time_ratio": ratios, "best_anchor": best, "gap_points": gap, "pass_accuracy": ok_acc,
            "pass_time": ok_time, "pass": ok_acc and ok_time}


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, modality, tools in ((axes[0], "image", IMAGE_TOOLS), (axes[1], "text", TEXT_TOOLS)):
        settings = [s for s in out["settings"] if s["modality"] == modality]
        for tool, color in zip(tools, ("tab:red", "tab:blue", "tab:green", "tab:gray")):
            for s, marker in zip(settings, "osD^v"):
                r = s["runs"].get(tool, {})
                if "accuracy" in r:
                    ax.scatter(r["seconds"], r["accuracy"], color=color, marker=marker, s=60,
                               label=f"{tool}, {s['setting']}")
        ax.set_xscale("log")
        ax.set(xlabel="wall time, fit + test predictions (s, log)", ylabel="test accuracy", title=modality)
        ax.grid(alpha=0.3)
        if settings:
            ax.legend(fontsize=7)
    fig.suptitle(f"headstart auto vs anchors ({out['scale']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(out: dict) -> None:
    print(f"\n{'setting':<9} {'tool':<15} {'acc':>6} {'F1':>6} {'wall s':>8} {'RSS MB':>7} {'hs/tool':>8}")
    for s in out["settings"]:
        ratios = s.get("verdict", {}).get("time_ratio", {})
        for tool, r in s["runs"].items():
            if "accuracy" not in r:
                print(f"{s['setting']:<9} {tool:<15} error: {r['error'][-120:]!r}")
                continue
            ratio = f"{ratios[tool]:.2f}" if tool in ratios else "-"
            sd = f" ±{r['accuracy_sd']:.3f}" if "accuracy_sd" in r else ""
            print(f"{s['setting']:<9} {tool:<15} {r['accuracy']:6.3f}{sd} {r['macro_f1']:6.3f} {r['seconds']:8.1f} "
                  f"{r['peak_rss_mb']:7.0f} {ratio:>8}")
        v = s.get("verdict", {})
        if "best_anchor" in v:
            print(f"  -> best anchor {v['best_anchor']}: gap {v['gap_points']:+.1f} pts, time ratio "
                  f"{v['time_ratio'][v['best_anchor']]:.2f}: {'PASS' if v['pass'] else 'FAIL'}")


def save(out: dict, path: str) -> None:
    """Written after every run, so a stopped run keeps what it measured."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="fm10,fm100,fm1000,tweets8,tweets64,tweets512")
    ap.add_argument("--tools", default=",".join(dict.fromkeys(IMAGE_TOOLS + TEXT_TOOLS)))
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=3, help="for every tool that takes epochs")
    ap.add_argument("--test-per-class", type=int, default=100, help="Fashion-MNIST test images per class")
    ap.add_argument("--tweets-test", type=int, default=600)
    ap.add_argument("--setfit-iterations", type=int, default=20, help="0: SetFit's default (all pairs)")
    ap.add_argument("--run-timeout", type=float, default=3600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1,
                    help="training subsets per setting (seeds seed..seed+N-1); tables and verdicts use the means")
    ap.add_argument("--json", default=os.path.join(RESULTS, "anchors.json"))
    ap.add_argument("--child-job", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_job:
        return child_main(args)
    import platform

    import torch

    wanted = args.tools.split(",")
    scale = (f"image size {args.image_size} px, {args.epochs} epochs, {args.test_per_class} test images/class, "
             f"{args.tweets_test} test tweets, SetFit num_iterations {args.setfit_iterations or 'default'}"
             + (f", mean of {args.repeats} training subsets" if args.repeats > 1 else ""))
    out: dict = {"code": headstart_state(), "args": {k: v for k, v in vars(args).items() if not k.startswith("child")},
                 "scale": scale,
                 "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                             "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                             "load_avg_at_start": os.getloadavg()},
                 "child_env": CHILD_ENV, "settings": []}
    with tempfile.TemporaryDirectory(prefix="headstart-anchors-") as tmp:
        for setting in [s for s in args.settings.split(",") if s]:
            entry: dict = {"setting": setting, "runs": {}, "repeats": []}
            out["settings"].append(entry)
            for seed in range(args.seed, args.seed + args.repeats):
                split = make_split(setting, args, os.path.join(tmp, "data"), seed)
                entry.update({k: split[k] for k in ("modality", "description")})
                entry["repeats"].append({})
                for tool in IMAGE_TOOLS if split["modality"] == "image" else TEXT_TOOLS:
                    if tool not in wanted:
                        continue
                    r = entry["repeats"][-1][tool] = run_child(tool, split, args, tmp)
                    said = f"acc {r['accuracy']:.3f}  {r['seconds']:.0f} s" if "accuracy" in r else r["error"][-300:]
                    print(f"{setting} seed {seed} {tool:<15} {said}", flush=True)
                    entry["runs"] = aggregate(entry["repeats"])
                    entry["verdict"] = verdict(entry["runs"])
                    save(out, args.json)
                    plot(out, os.path.splitext(args.json)[0] + ".png")
    out["machine"]["load_avg_at_end"] = os.getloadavg()
    save(out, args.json)
    print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
