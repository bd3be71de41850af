"""Benchmark: does `strategy="auto"` pick well, and for less than trying everything? And does `rank` order backbones?

Per setting, every strategy in `hs.STRATEGIES` and `auto` are fitted and scored on a held-out test set. Each fit
gets its own fresh, empty feature cache, so every time (fit + evaluate) is cold and auto pays for its own feature
extraction and measurements. Reported: auto's test accuracy, the best strategy's (an oracle: best on test), the
regret in accuracy points, and auto's wall time over the sum of all strategies' times.
Targets: regret <= 1 point on every setting, at <= 1/3 of the time of trying everything.

Then the Spearman correlation between `hs.rank` scores (LogME, probe accuracy) and the accuracy after fine-tuning
(`--rank-strategy`), over the backbones that run offline: EfficientNet-Lite0 (ImageNet), the same architecture
randomly initialised, Lite0 cut after each stage k (stem + stages 0..k, global average pool; built here, ImageNet
weights), and MiniLM-L6 vs a random text encoder (two points: only the sign says anything).

Run (settings: fmN = Fashion-MNIST with N images per class; tweets or tweetsN = tweet sentiment, N per class):
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python bench/auto_regret.py \
      --settings fm10,fm100,fm1000,tweets --image-size 96 --epochs 3 --test-per-class 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time

import torch
import transformers
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr
from torch import nn

import headstart as hs
import headstart.backbones as hsb
from headstart._allocator import tune_allocator
from headstart.backbones.vision import LITE0_PREPROCESS
from headstart.data.fashion_mnist import export_subset
from headstart.data.tweets import export_split

REGRET_TARGET, TIME_TARGET = 1.0, 1 / 3
CUT_SOURCE = "bench-lite0-cut"
console = Console(width=150)


class Lite0Cut(nn.Module):
    """EfficientNet-Lite0 truncated after stage `keep`: stem, blocks[0..keep], global average pooling."""

    def __init__(self, net: nn.Module, keep: int) -> None:
        super().__init__()
        self.conv_stem, self.bn1 = net.conv_stem, net.bn1
        self.blocks = nn.Sequential(*list(net.blocks)[: keep + 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.bn1(self.conv_stem(x))).mean((2, 3))


def build_cut(spec: hsb.BackboneSpec, pretrained: bool) -> hsb.Backbone:
    full = hsb.create_backbone("efficientnet_lite0", pretrained=pretrained, image_size=spec.preprocess.size)
    keep = int(spec.options["keep"])
    body = Lite0Cut(full.body, keep)
    with torch.no_grad():
        dim = body.eval()(torch.zeros(1, 3, 32, 32)).shape[-1]
    order = ["stem"] + [f"stage{i}" for i in range(keep + 1)]
    return hsb.Backbone(spec, body, dim, lambda n: "stem" if not n.startswith("blocks.") else f"stage{n.split('.')[1]}",
                        order)


def register_cuts(stages: list[int]) -> list[str]:
    hsb.BUILDERS[CUT_SOURCE] = build_cut  # the registry's builder table, extended for this process only
    for k in stages:
        hsb.register_backbone(hsb.BackboneSpec(name=f"lite0_cut{k}", source=CUT_SOURCE, arch="efficientnet_lite0",
                                               preprocess=LITE0_PREPROCESS, offline=True, options={"keep": k}))
    return [f"lite0_cut{k}" for k in stages]


def make_data(setting: str, args: argparse.Namespace, tmp: str) -> tuple[str, str, str, str]:
    """(modality, train, test, description) for a setting name."""
    root = os.path.join(tmp, "data", setting)
    if setting.startswith("fm"):
        n = int(setting[2:])
        train = export_subset(os.path.join(root, "train"), "train", n, seed=args.seed)
        test = export_subset(os.path.join(root, "test"), "test", args.test_per_class, seed=args.seed + 1)
        return "image", train, test, f"Fashion-MNIST, {n}/class train, {args.test_per_class}/class test"
    if setting.startswith("tweets"):
        n = int(setting[6:] or args.tweets_per_class)
        train, test, _ = export_split(root, n, args.tweets_test, seed=args.seed)
        return "text", train, test, f"tweets, {n}/class train, {args.tweets_test} test (corpus class mix)"
    raise SystemExit(f"unknown setting '{setting}': use fmN or tweets[N]")


def run_fit(modality: str, train: str, test: str, args: argparse.Namespace, tmp: str, **params) -> dict:
    """Fit + evaluate with a fresh, empty cache; seconds are wall time of both. Errors are recorded, not raised."""
    cache_dir = tempfile.mkdtemp(prefix="cache-", dir=tmp)
    kind = hs.ImageClassifier if modality == "image" else hs.TextClassifier
    extra = {"image_size": args.image_size} if modality == "image" else {}
    started = time.perf_counter()
    try:
        clf = kind(epochs=args.epochs, seed=args.seed, verbose=False, cache_dir=cache_dir, **extra, **params)
        clf.fit(train)
        fitted = time.perf_counter()
        acc = clf.evaluate(test)["accuracy"]
        done = time.perf_counter()
    except Exception as err:  # a strategy that cannot run on this data is a result too
        return {"error": f"{type(err).__name__}: {err}"[:300], "seconds": time.perf_counter() - started}
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    out = {"accuracy": acc, "val_accuracy": clf.metrics_["validation"]["accuracy"], "fit_s": fitted - started,
           "eval_s": done - fitted, "seconds": done - started}
    if clf.advice_ is not None:
        out.update(chosen=clf.advice_.strategy, reasons=clf.advice_.reasons, measurements=clf.advice_.measurements)
    return out


def run_setting(setting: str, args: argparse.Namespace, tmp: str) -> dict:
    modality, train, test, desc = make_data(setting, args, tmp)
    runs = {}
    for name in [*hs.STRATEGIES, "auto"]:
        if name == "setfit" and modality != "text":
            continue  # tunes sentence encoders only
        runs[name] = run_fit(modality, train, test, args, tmp, strategy=name)
        r = runs[name]
        console.print(f"  {setting} {name:<10} " + (f"acc {r['accuracy']:.3f}" if "accuracy" in r else r["error"])
                      + f"  {r['seconds']:.0f} s" + (f"  -> {r['chosen']}" if "chosen" in r else ""))
    ok = {k: v for k, v in runs.items() if k != "auto" and "accuracy" in v}
    best = max(ok, key=lambda k: ok[k]["accuracy"])
    val_pick = max(ok, key=lambda k: ok[k]["val_accuracy"])
    auto = runs["auto"]
    all_s = sum(v["seconds"] for k, v in runs.items() if k != "auto")
    all_fit = sum(v.get("fit_s", v["seconds"]) for k, v in runs.items() if k != "auto")
    res = {"setting": setting, "modality": modality, "description": desc, "runs": runs, "best": best,
           "best_accuracy": ok[best]["accuracy"], "val_pick": val_pick}
    if "accuracy" in auto:
        res.update(auto_accuracy=auto["accuracy"], chosen=auto["chosen"],
                   regret_points=100 * (ok[best]["accuracy"] - auto["accuracy"]),
                   regret_vs_val_pick_points=100 * (ok[val_pick]["accuracy"] - auto["accuracy"]),
                   time_fraction=auto["seconds"] / all_s, fit_time_fraction=auto["fit_s"] / all_fit)
        res["pass"] = res["regret_points"] <= REGRET_TARGET and res["time_fraction"] <= TIME_TARGET
    else:
        res["pass"] = False
    table = Table(title=f"{setting}: {desc}")
    for col in ("strategy", "test acc", "val acc", "fit s", "eval s", "fit+eval s", "note"):
        table.add_column(col, justify="left" if col in ("strategy", "note") else "right")
    for name, r in runs.items():
        if "error" in r:
            table.add_row(name, "-", "-", "-", "-", f"{r['seconds']:.0f}", r["error"][:60])
            continue
        note = ", ".join(x for x in ("best on test" if name == best else "",
                                     "best on validation" if name == val_pick else "",
                                     f"chose {r['chosen']}" if "chosen" in r else "") if x)
        table.add_row(name, f"{r['accuracy']:.3f}", f"{r['val_accuracy']:.3f}", f"{r['fit_s']:.0f}",
                      f"{r['eval_s']:.0f}", f"{r['seconds']:.0f}", note)
    console.print(table)
    if "reasons" in auto:
        console.print("  auto: " + "\n  auto: ".join(auto["reasons"]))
    return res


def warm_up(image_size: int, text: bool) -> None:
    """One forward + backward of each backbone family first, so that no timed fit pays torch's start-up costs."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    image = hs.create_backbone("efficientnet_lite0", image_size=image_size).to(device)
    image.train()(torch.zeros(8, 3, image_size, image_size, device=device)).sum().backward()
    if not text:
        return
    text = hs.create_backbone("minilm_l6", modality="text")
    text.train()(dict(text.tokenizer(["warm up"] * 8, return_tensors="pt"))).sum().backward()


def spearman(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    rho = spearmanr(xs, ys).statistic
    return None if rho is None or math.isnan(rho) else round(float(rho), 3)


def run_rank(modality: str, train: str, test: str, names: list[str], args: argparse.Namespace, tmp: str) -> dict:
    """rank() scores vs accuracy after fine-tuning each candidate with the same recipe."""
    scores = {r["backbone"]: r for r in hs.rank(train, names, modality=modality, image_size=args.image_size,
                                                 seed=args.seed, verbose=False)}
    rows = []
    for name in names:
        base, _, variant = name.partition("@")
        fit = run_fit(modality, train, test, args, tmp, backbone=base, pretrained=variant != "random",
                      strategy=args.rank_strategy)
        s = scores[name]
        rows.append({"backbone": name, "logme": s["logme"], "probe_accuracy": s["probe_accuracy"],
                     "leep": s.get("leep"), "finetuned_accuracy": fit.get("accuracy"), "error": fit.get("error"),
                     "seconds": s["seconds"] + fit["seconds"]})
        console.print(f"  rank {name:<24} logme {s['logme']:.3f} probe {s['probe_accuracy']:.3f} "
                      f"fine-tuned {fit.get('accuracy', float('nan')):.3f}")
    good = [r for r in rows if r["finetuned_accuracy"] is not None]
    acc = [r["finetuned_accuracy"] for r in good]
    rho = {k: spearman([r[k] for r in good], acc) for k in ("logme", "probe_accuracy")}
    table = Table(title=f"rank vs fine-tuned ({args.rank_strategy}) accuracy, {modality}")
    for col in ("backbone", "LogME", "probe acc", "fine-tuned test acc"):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for r in sorted(rows, key=lambda r: -r["logme"]):
        table.add_row(r["backbone"], f"{r['logme']:.3f}", f"{r['probe_accuracy']:.3f}",
                      "-" if r["finetuned_accuracy"] is None else f"{r['finetuned_accuracy']:.3f}")
    console.print(table)
    console.print(f"  Spearman over {len(good)} backbones: LogME {rho['logme']}, probe {rho['probe_accuracy']}"
                  + ("  (2 points: only the sign is informative)" if len(good) == 2 else ""))
    return {"modality": modality, "rows": rows, "spearman": rho, "n": len(good)}


def save(out: dict, path: str) -> None:
    """Written after every part, so a long run that is stopped keeps what it measured."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2, default=str)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="fm10,fm100,fm1000,tweets")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--test-per-class", type=int, default=100, help="Fashion-MNIST test images per class")
    ap.add_argument("--tweets-per-class", type=int, default=64)
    ap.add_argument("--tweets-test", type=int, default=600)
    ap.add_argument("--rank", default="image,text", help="rank-vs-fine-tune parts to run: image, text, or none")
    ap.add_argument("--rank-per-class", type=int, default=30, help="Fashion-MNIST images per class for rank")
    ap.add_argument("--cut-stages", default="0,1,2,3,4,5,6", help="Lite0 truncated after these stages")
    ap.add_argument("--rank-strategy", default="two-stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "auto_regret.json"))
    args = ap.parse_args()
    tuned = tune_allocator()
    transformers.logging.disable_progress_bar()
    warm_up(args.image_size, text="tweets" in args.settings or "text" in args.rank)
    started = time.perf_counter()
    out: dict = {"args": vars(args), "allocator_tuned": tuned, "torch_threads": torch.get_num_threads(),
                 "cpu_count": os.cpu_count(), "settings": [], "rank": [],
                 "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    with tempfile.TemporaryDirectory(prefix="headstart-auto-regret-") as tmp:
        os.environ["HEADSTART_CACHE"] = os.path.join(tmp, "rank-cache")  # rank() uses the default cache root
        for setting in [s for s in args.settings.split(",") if s]:
            out["settings"].append(run_setting(setting, args, tmp))
            save(out, args.json)
        parts = args.rank.split(",")
        if "image" in parts:
            cuts = register_cuts([int(k) for k in args.cut_stages.split(",") if k])
            _, train, test, _ = make_data(f"fm{args.rank_per_class}", args, tmp)
            names = ["efficientnet_lite0", "efficientnet_lite0@random", *cuts]
            out["rank"].append(run_rank("image", train, test, names, args, tmp))
            save(out, args.json)
        if "text" in parts:
            _, train, test, _ = make_data("tweets", args, tmp)
            out["rank"].append(run_rank("text", train, test, ["minilm_l6", "minilm_l6@random"], args, tmp))
    table = Table(title=f"auto vs every strategy (targets: regret <= {REGRET_TARGET:g} point, "
                        f"time <= {TIME_TARGET:.2f} of trying all)")
    for col in ("setting", "auto chose", "auto acc", "best", "best acc", "regret (pts)", "time frac", "fit frac",
                "result"):
        table.add_column(col, justify="left" if col in ("setting", "auto chose", "best") else "right")
    for s in out["settings"]:
        if "auto_accuracy" not in s:
            table.add_row(s["setting"], "error", "-", s["best"], f"{s['best_accuracy']:.3f}", "-", "-", "-", "FAIL")
            continue
        checks = (("regret", s["regret_points"] <= REGRET_TARGET), ("time", s["time_fraction"] <= TIME_TARGET))
        verdict = " ".join(f"{'ok' if good else 'FAIL'}-{what}" for what, good in checks)
        table.add_row(s["setting"], s["chosen"], f"{s['auto_accuracy']:.3f}", s["best"], f"{s['best_accuracy']:.3f}",
                      f"{s['regret_points']:+.1f}", f"{s['time_fraction']:.2f}", f"{s['fit_time_fraction']:.2f}",
                      "PASS" if s["pass"] else verdict)
    console.print(table)
    for r in out["rank"]:
        console.print(f"Spearman(rank score, fine-tuned accuracy), {r['modality']}, {r['n']} backbones: "
                      f"LogME {r['spearman']['logme']}, probe accuracy {r['spearman']['probe_accuracy']}")
    out["all_pass"] = bool(out["settings"]) and all(s["pass"] for s in out["settings"])
    out["total_seconds"] = time.perf_counter() - started
    console.print(f"overall: {'PASS' if out['all_pass'] else 'FAIL'} ({out['total_seconds']:.0f} s)")
    save(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
