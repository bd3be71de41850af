"""Would `auto` decide otherwise if the advisor measured with the head stage's probe? (issue 25, "one probe")

The advisor scores frozen features with `rank.probe_accuracy` (logistic regression at a fixed C = 0.5 on standardised
features, 3 stratified folds: scikit-learn's numbers, on probe.py's solver since issue 25); the head stage fits
`probe.fit_probe` (scaling and C chosen by cross-validated log loss). For each training subset this takes the
advisor's own inputs (the training part after the 20% hold-out, at most MAX_MEASURE_ROWS rows), scores them with
both probes (for images the 16x16-pixel reference too; texts' TF-IDF reference is the same either way), times both,
and applies `advisor.decide` to each.

  PYTHONPATH=. python bench/advisor_probe.py --task fashion --per-class 10,30,100,300 --subsets 0,1,2
  PYTHONPATH=. python bench/advisor_probe.py --task tweets --per-class 64,512 --subsets 0,1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch
from time_limit import code_state  # bench/ is on sys.path when a script runs: one definition

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "advisor_probe.json")


def head_stage_accuracy(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, str, float]:
    """probe.py's choice (both scalings, the C grid, by cross-validated log loss, as fit_probe makes it), then its
    out-of-fold accuracy on the same folds: (accuracy, scaling, C)."""
    from headstart.data.labeled import stratified_subsample
    from headstart.heads import Standardize
    from headstart.probe import MAX_SELECT_ROWS, _cv_search, _folds, _scale, _solve_folds

    x_all, y_all = torch.as_tensor(features).float(), torch.as_tensor(labels).long()
    n_classes = int(y_all.max()) + 1
    standardize = Standardize(x_all.shape[1])
    standardize.set_statistics(x_all)
    scaled = {"standardized": (x_all - standardize.mean) / standardize.std, "as given": x_all}
    rows = torch.as_tensor(stratified_subsample(len(y_all), y_all.numpy(), seed, MAX_SELECT_ROWS))
    searched = {name: _cv_search(x[rows], y_all[rows], n_classes, seed) for name, x in scaled.items()}
    scaling = min(searched, key=lambda name: searched[name][1])
    c_value = searched[scaling][0]
    x = _scale(Standardize(x_all.shape[1]), x_all, scaling)
    masks, held = _folds(y_all, seed)
    weight, bias = _solve_folds(x, y_all, masks, n_classes, c_value)
    correct = sum(int(((x[r] @ weight[f].T + bias[f]).argmax(-1) == y_all[r]).sum()) for f, r in enumerate(held))
    return correct / len(y_all), scaling, c_value


def grey_pixels(paths: list[str]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("L").resize((16, 16)), dtype=np.float32).ravel() / 255
                     for p in paths])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["fashion", "tweets"], default="fashion")
    ap.add_argument("--per-class", default="10,30,100,300")
    ap.add_argument("--subsets", default="0,1,2")
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()

    from headstart._allocator import tune_allocator

    tune_allocator()
    from headstart.advisor import MAX_MEASURE_ROWS, decide, raw_input_accuracy
    from headstart.backbones import create_backbone
    from headstart.data import fashion_mnist, tweets
    from headstart.data.labeled import stratified_split, stratified_subsample
    from headstart.inference import embed
    from headstart.modalities import MODALITIES
    from headstart.rank import probe_accuracy

    image = args.task == "fashion"
    backbone = (create_backbone("efficientnet_lite0", image_size=args.image_size) if image
                else create_backbone("minilm_l6", modality="text"))
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="advisor-probe-") as root:
        for per_class in [int(s) for s in args.per_class.split(",") if s]:
            for seed in [int(s) for s in args.subsets.split(",") if s]:
                where = os.path.join(root, f"{args.task}{per_class}-{seed}")
                if image:
                    data = MODALITIES["image"].load(fashion_mnist.export_subset(where, "train", per_class, seed),
                                                    "classification", False, {})
                else:
                    train_csv, _, _ = tweets.export_split(where, per_class, 10, seed)
                    data = MODALITIES["text"].load(train_csv, "classification", False, {})
                train = data.subset(stratified_split(data, 0.2, seed)[0])  # what the advisor sees
                feats, ok = embed(backbone, train.items, verbose=False)
                rows = np.flatnonzero(ok)
                rows = rows[stratified_subsample(len(rows), train.targets[rows], seed, MAX_MEASURE_ROWS)]
                f, y = feats[rows], train.targets[rows]
                started = time.perf_counter()
                old = probe_accuracy(f, y, seed=seed)
                old_s = time.perf_counter() - started
                started = time.perf_counter()
                new, scaling, c_value = head_stage_accuracy(f, y, seed)
                new_s = time.perf_counter() - started
                items = [train.items[i] for i in rows]
                if image:
                    pixels = grey_pixels(items)
                    base_old, base_new = probe_accuracy(pixels, y, seed=seed), head_stage_accuracy(pixels, y, seed)[0]
                else:
                    base_old = base_new = raw_input_accuracy("text", items, y, seed)
                common = dict(per_class=int(min(train.class_counts().values())), n_train=len(train),
                              n_classes=len(train.classes), logme_score=0.0, seconds_per_item=0.003, epochs=3,
                              time_limit=None, modality="image" if image else "text")
                row = {"task": args.task, "per_class": per_class, "subset": seed, "rows": len(y),
                       "probe_fixed_c": round(old, 4), "probe_head_stage": round(new, 4), "scaling": scaling,
                       "C": c_value, "seconds_fixed_c": round(old_s, 2), "seconds_head_stage": round(new_s, 2),
                       "reference_fixed_c": round(base_old, 4), "reference_head_stage": round(base_new, 4),
                       "decides_fixed_c": decide(probe=old, baseline=base_old, **common).strategy,
                       "decides_head_stage": decide(probe=new, baseline=base_new, **common).strategy}
                print(json.dumps(row), flush=True)
                rows_out.append(row)
    out = {"runs": []}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            out = json.load(f)
    out["runs"].append({"code": code_state(), "args": vars(args), "rows": rows_out,
                        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                    "torch_threads": torch.get_num_threads(),
                                    "load_avg_at_end": os.getloadavg()}})
    with open(RESULTS, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
