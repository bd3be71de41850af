"""Benchmark: peak memory of `headstart fit --strategy features` as the data grow 1x, 4x and 16x.

The data are real Fashion-MNIST photos; the larger sizes repeat them with augmentation (random crop and resize,
flip, brightness, noise), so every file is new to the feature cache and every image is decoded and embedded.
Each size runs `headstart fit` in a fresh process with an empty cache; its peak resident memory comes from the
kernel (`os.wait4`'s ru_maxrss). The 1x run is the baseline; each size prints its ratio to it.
Target: peak RSS at 16x < 1.5x the peak at 1x (features are streamed in batches and cached on disk,
memory-mapped; only the pooled feature rows, not the images, are ever held whole).

Run: MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python bench/memory.py
     [--base 500] [--scales 1,4,16] [--backbone efficientnet_lite0] [--image-size 224] [--json PATH]
Reduced scale: --base 60 --image-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageEnhance

from headstart.data.fashion_mnist import export_subset

TARGET = 1.5


def augmented_copy(src: str, dst: str, rng: np.random.Generator) -> None:
    """A new image from a real one: random crop resized back, flip, brightness and pixel noise."""
    with Image.open(src) as img:
        img = img.convert("L")
        w, h = img.size
        crop = int(rng.integers(int(0.75 * w), w + 1))
        x0, y0 = (int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1)))
        img = img.crop((x0, y0, x0 + crop, y0 + crop)).resize((w, h), Image.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
        pixels = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, size=(h, w))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(dst)


def build_sizes(root: str, base: int, scales: list[int], seed: int) -> dict[int, str]:
    """One folder per scale; the larger ones hold the 1x images plus augmented copies (hard links, not copies,
    for images a smaller size already has)."""
    real = export_subset(os.path.join(root, "real"), "train", max(1, base // 10), seed=seed)
    rng = np.random.default_rng(seed)
    originals = sorted(os.path.join(c, f) for c in os.listdir(real) for f in os.listdir(os.path.join(real, c)))
    biggest = os.path.join(root, f"x{max(scales)}")
    for rel in originals:
        os.makedirs(os.path.join(biggest, os.path.dirname(rel)), exist_ok=True)
        os.link(os.path.join(real, rel), os.path.join(biggest, rel))
        stem, ext = os.path.splitext(rel)
        for k in range(1, max(scales)):
            augmented_copy(os.path.join(real, rel), os.path.join(biggest, f"{stem}-aug{k:02d}{ext}"), rng)
    folders = {}
    for scale in scales:
        folder = os.path.join(root, f"x{scale}")
        if folder != biggest:
            for rel in originals:
                os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
                stem, ext = os.path.splitext(rel)
                names = [rel] + [f"{stem}-aug{k:02d}{ext}" for k in range(1, scale)]
                for name in names:
                    os.link(os.path.join(biggest, name), os.path.join(folder, name))
        folders[scale] = folder
    return folders


def peak_rss_of_fit(data: str, out: str, cache: str, args: argparse.Namespace) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `headstart fit --strategy features` process."""
    cmd = [sys.executable, "-m", "headstart.cli", "fit", data, "--strategy", "features", "--out", out,
           "--backbone", args.backbone, "--head-epochs", str(args.head_epochs), "--quiet"]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    env = {**os.environ, "HEADSTART_CACHE": cache}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage; ru_maxrss is in KiB on Linux
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"fit failed on {data}:\n{proc.stderr.read().decode()[-3000:]}")
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=500, help="images at 1x (real Fashion-MNIST, base/10 a class)")
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's own")
    parser.add_argument("--head-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "memory.json"))
    args = parser.parse_args()
    scales = sorted(int(s) for s in args.scales.split(","))

    with tempfile.TemporaryDirectory() as root:
        folders = build_sizes(root, args.base, scales, args.seed)
        rows = []
        for scale in scales:
            n = sum(len(files) for _, _, files in os.walk(folders[scale]))
            rss, seconds = peak_rss_of_fit(folders[scale], os.path.join(root, f"run{scale}"),
                                           os.path.join(root, f"cache{scale}"), args)
            rows.append({"scale": scale, "images": n, "peak_rss_mib": round(rss, 1), "seconds": round(seconds, 1)})
    baseline = rows[0]["peak_rss_mib"]
    print(f"fit --strategy features, backbone {args.backbone}, image size {args.image_size or 'default'}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'scale':>6} {'images':>8} {'peak RSS MiB':>13} {'ratio to 1x':>12} {'seconds':>8}")
    for r in rows:
        r["ratio"] = round(r["peak_rss_mib"] / baseline, 3)
        print(f"{r['scale']:>5}x {r['images']:>8} {r['peak_rss_mib']:>13.1f} {r['ratio']:>12.3f} {r['seconds']:>8.1f}")
    top = rows[-1]
    verdict = "met" if top["ratio"] < TARGET else "MISSED"
    print(f"target: peak RSS at {top['scale']}x < {TARGET}x the 1x peak: {verdict} ({top['ratio']:.3f}x)")
    result = {"benchmark": "memory", "command": "headstart fit --strategy features", "backbone": args.backbone,
              "image_size": args.image_size, "base_images": args.base, "rows": rows, "target_ratio": TARGET,
              "met": top["ratio"] < TARGET, "load_average": os.getloadavg()[0]}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
