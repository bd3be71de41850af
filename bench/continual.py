"""Benchmark: class-incremental Fashion-MNIST in 5 steps of 2 classes, every continual method in one run.

Frozen EfficientNet-Lite0 features (packaged ImageNet weights, 224 px, computed once through headstart's feature
cache) feed a linear head. Step 1 trains the head on classes 0-1; each later step adds two classes with
`headstart.methods.continual.train_incremental`, the function `model.extend` calls. After every step the head is scored
on the test images of every step seen so far, predicting among all classes seen so far (class-incremental: no
task id at test time). Reported per method:
- final average accuracy: mean over the 5 steps' classes of the accuracy after the last step;
- average forgetting: for each of steps 1-4, the best accuracy it ever had minus its accuracy at the end, averaged.
`joint` (all classes trained at once) is the upper bound; `finetune` is the baseline the ratios are against.
Rehearsal keeps `--memory` herding exemplars per class; EWC computes its Fisher on the same buffer.

Run: .venv/bin/python bench/continual.py [--train-per-class 200] [--test-per-class 100] [--epochs 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import numpy as np
import torch

from headstart._allocator import tune_allocator
from headstart.backbones import create_backbone
from headstart.data.fashion_mnist import CLASSES, export_subset
from headstart.data.images import list_image_files
from headstart.heads import HeadConfig, build_head
from headstart.inference import embed
from headstart.methods.continual import ContinualSettings, train_incremental
from headstart.methods.exemplars import build_memory

METHODS = ("finetune", "rehearsal", "lwf", "ewc")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "continual.json")


def features(split: str, per_class: int, seed: int, root: str, backbone) -> tuple[np.ndarray, np.ndarray]:
    folder = export_subset(os.path.join(root, split), split, per_class, seed=seed)
    paths = list_image_files([folder])
    labels = np.array([CLASSES.index(os.path.basename(os.path.dirname(p))) for p in paths], dtype=np.int64)
    feats, ok = embed(backbone, paths, batch_size=64, verbose=True)
    assert ok.all(), "every Fashion-MNIST image must decode"
    return feats, labels


def accuracy_per_step(head, feats: np.ndarray, labels: np.ndarray, steps_seen: int, per_step: int) -> list[float]:
    with torch.no_grad():
        pred = head.eval()(torch.as_tensor(feats)).argmax(-1).numpy()
    return [float((pred[labels // per_step == s] == labels[labels // per_step == s]).mean())
            for s in range(steps_seen)]


def first_head(feats: np.ndarray, labels: np.ndarray, settings: ContinualSettings) -> torch.nn.Module:
    """The head of step 1, as `fit` would leave it: standardised on its training features, trained on 2 classes."""
    head = build_head(HeadConfig(), feats.shape[1], int(labels.max()) + 1)
    head[0].set_statistics(torch.as_tensor(feats))
    return train_incremental(head, int(labels.max()) + 1, feats, labels,
                             dataclasses.replace(settings, method="finetune"))


def run_method(method: str, data: dict, settings: ContinualSettings, steps: int, per_step: int) -> dict:
    xtr, ytr, xte, yte = data["xtr"], data["ytr"], data["xte"], data["yte"]
    settings = dataclasses.replace(settings, method=method)
    start = time.perf_counter()
    in_step = ytr < per_step
    head = first_head(xtr[in_step], ytr[in_step], settings)
    memory = build_memory(xtr[in_step], ytr[in_step], settings.memory_per_class)
    matrix = [accuracy_per_step(head, xte[yte < per_step], yte[yte < per_step], 1, per_step)]
    for step in range(1, steps):
        n = (step + 1) * per_step
        new = (ytr >= step * per_step) & (ytr < n)
        head = train_incremental(head, n, xtr[new], ytr[new], settings,
                                 memory if method in ("rehearsal", "ewc") else None)
        memory = build_memory(xtr[new], ytr[new], settings.memory_per_class, previous=memory)
        seen = yte < n
        matrix.append(accuracy_per_step(head, xte[seen], yte[seen], step + 1, per_step))
    final = matrix[-1]
    forgetting = [max(matrix[t][j] for t in range(j, steps - 1)) - final[j] for j in range(steps - 1)]
    return {"final_average_accuracy": float(np.mean(final)), "average_forgetting": float(np.mean(forgetting)),
            "accuracy_matrix": matrix, "seconds": round(time.perf_counter() - start, 2)}


def run_joint(data: dict, settings: ContinualSettings, steps: int, per_step: int) -> dict:
    start = time.perf_counter()
    head = first_head(data["xtr"], data["ytr"], settings)
    final = accuracy_per_step(head, data["xte"], data["yte"], steps, per_step)
    return {"final_average_accuracy": float(np.mean(final)), "average_forgetting": 0.0,
            "accuracy_matrix": [final], "seconds": round(time.perf_counter() - start, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-per-class", type=int, default=200)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=30, help="head epochs per step")
    ap.add_argument("--memory", type=int, default=20, help="rehearsal exemplars per class")
    ap.add_argument("--ewc-weight", type=float, default=ContinualSettings.ewc_weight)
    ap.add_argument("--lwf-weight", type=float, default=ContinualSettings.lwf_weight)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=RESULTS)
    args = ap.parse_args()
    tune_allocator()
    steps, per_step = 5, 2
    settings = ContinualSettings(memory_per_class=args.memory, epochs=args.epochs, ewc_weight=args.ewc_weight,
                                 lwf_weight=args.lwf_weight, seed=args.seed)
    backbone = create_backbone("efficientnet_lite0").eval()
    with tempfile.TemporaryDirectory(prefix="headstart-continual-") as tmp:
        t0 = time.perf_counter()
        xtr, ytr = features("train", args.train_per_class, args.seed, tmp, backbone)
        xte, yte = features("test", args.test_per_class, args.seed + 1, tmp, backbone)
        feature_seconds = time.perf_counter() - t0
    data = {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}
    results = {m: run_method(m, data, settings, steps, per_step) for m in METHODS}
    results["joint"] = run_joint(data, settings, steps, per_step)
    base = results["finetune"]["final_average_accuracy"]
    print(f"class-incremental Fashion-MNIST, {steps} steps x {per_step} classes; Lite0 features @224px of "
          f"{len(ytr)} train / {len(yte)} test images ({feature_seconds:.0f} s, cached after the first run); "
          f"{args.epochs} head epochs per step, memory {args.memory}/class")
    print(f"{'method':<11}{'final avg acc':>14}{'avg forgetting':>16}{'acc / finetune':>16}{'seconds':>9}")
    for name, r in results.items():
        print(f"{name:<11}{r['final_average_accuracy']:>14.3f}{r['average_forgetting']:>16.3f}"
              f"{r['final_average_accuracy'] / base:>16.2f}{r['seconds']:>9.1f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "train_images": int(len(ytr)), "test_images": int(len(yte)),
                   "feature_seconds": round(feature_seconds, 1), "settings": settings.to_dict(),
                   "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
