"""Showcase: with a couple of thousand Fashion-MNIST images, the from-scratch model overfits and transfer does not.

Runs `hs.compare` (two-stage transfer vs the same EfficientNet-Lite0 trained from random weights) on 200 training
images per class, scored on 100 test images per class, and writes the comparison, the train-vs-validation loss
curves (`overfitting.png`) and the report page into --out. Prints, per method, the last epoch's train and validation
loss and their ratio: overfitting shows as validation loss well above training loss.

    python bench/overfitting.py --image-size 64 --scratch-epochs 40 --out bench/results/overfitting
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import headstart as hs  # noqa: E402
from headstart._allocator import tune_allocator  # noqa: E402
from headstart.data.fashion_mnist import export_subset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of the transfer run")
    ap.add_argument("--scratch-epochs", type=int, default=40)
    ap.add_argument("--no-augment", dest="augment", action="store_false",
                    help="train on the plain images (no random crops or flips), for every method")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "overfitting"))
    args = ap.parse_args()
    tune_allocator()
    tmp = tempfile.mkdtemp(prefix="headstart-overfitting-")
    train = export_subset(os.path.join(tmp, "train"), "train", args.per_class, seed=0)
    test = export_subset(os.path.join(tmp, "test"), "test", args.test_per_class, seed=1)
    rows = hs.compare(train, strategies=["two-stage"], sizes=[args.per_class], test=test, epochs=args.epochs,
                      scratch_epochs=args.scratch_epochs, image_size=args.image_size, out_dir=args.out,
                      augment=args.augment)
    summary = []
    for r in rows:
        last = r["history"][-1]
        best = min(r["history"], key=lambda h: h["val_loss"])
        summary.append({"method": r["method"], "test_accuracy": round(r["accuracy"], 4), "seconds": r["seconds"],
                        "last_train_loss": round(last["train_loss"], 4), "last_val_loss": round(last["val_loss"], 4),
                        "val_over_train": round(last["val_loss"] / max(last["train_loss"], 1e-9), 2),
                        "best_val_epoch": r["history"].index(best) + 1, "epochs_run": len(r["history"])})
        print(json.dumps(summary[-1]))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"args": vars(args), "rows": summary}, f, indent=1)
    print(f"report: {os.path.join(args.out, 'report', 'index.html')}")


if __name__ == "__main__":
    main()
