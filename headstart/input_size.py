"""Resolution as a cost knob: where a user's images are far smaller than a backbone's native input size (28 px
digits fed to a 224 px network), `auto` also scores the backbone it chose at smaller sizes, as candidates like
the backbones (backbone_choice.py: the same subsample, folds, paired probe, cost and rule), and fits the one it
chooses.

- The images' size: the median shorter side of up to SIDE_SAMPLE training images, read from their headers (PIL
  opens lazily: nothing is decoded), spread over the rows. The shorter side, because the preprocessing resizes it.
- The size tried: UPSAMPLES times that side, rounded to a multiple of SIZE_STEP, at least MIN_SIZE, and only those
  below the backbone's native size. So there is no separate gate: a size is tried exactly where the images are
  under a quarter of the native size (at 4x or more of the side, the native size upsamples them further, adding
  interpolated pixels, not detail), and whether it wins is measured per data set by the paired probe.
- An explicit `image_size` is the user's decision: nothing else is tried. An explicit backbone under `auto` gets
  its size chosen too (choose_for_fit): the user named the model, not the resolution, and a 28 px image at 224 px
  costs 12x the arithmetic of 64 px for what the probe measures.

bench/input_size.py measured Lite0 at 224-64 px on Fashion-MNIST (28 px): docs/decisions.md ("Input size").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from .backbones import BackboneSpec

SIDE_SAMPLE = 32  # headers read: the median of 32 sides is stable for a folder of one kind of image, and costs ms
# 4x the side: at 1x the stem's stride-2 convolution halves the images' own detail before any block sees it, and
# at 2x Lite0 lost 3-5 points on all three Fashion-MNIST tasks (bench/results/input_size.json: 64 px 0.778 / 0.944
# vs 224 px 0.830 / 0.974), a loss a 100-row probe cannot see near the ceiling (`auto` chose 64 px on the coarse
# task, 0.944); 4x (128 px) stayed within 0.6 points at a quarter of the arithmetic. Beyond 4x, the receptive
# fields cover interpolated pixels of the same few source pixels. Set on Fashion-MNIST; checked on scikit-learn's
# 8 px digits (docs/decisions.md, "Input size").
UPSAMPLES = (4,)
SIZE_STEP = 32  # the Lites' (and most ImageNet CNNs') total stride: a size in steps of it keeps the maps whole
MIN_SIZE = 64  # at stride 32, a 2x2 final map: smaller leaves the pooled features one position


def median_side(items: Sequence) -> int | None:
    """The median shorter side, in pixels, of up to SIDE_SAMPLE of the image files `items` (None: none readable)."""
    if not items:
        return None
    picks = np.unique(np.linspace(0, len(items) - 1, min(len(items), SIDE_SAMPLE)).round().astype(int))
    sides = []
    for i in picks:
        try:
            with Image.open(items[i]) as img:  # the header only: Image.open does not decode the pixels
                sides.append(min(img.size))
        except (OSError, ValueError, TypeError):  # unreadable: the loader skips it as well
            continue
    return int(np.median(sides)) if sides else None


def smaller_sizes(native: int, side: int | None) -> list[int]:
    """The sizes below `native` to try for images whose median shorter side is `side` (the module says why)."""
    if side is None:
        return []
    sizes = {max(MIN_SIZE, SIZE_STEP * int(k * side / SIZE_STEP + 0.5)) for k in UPSAMPLES}
    return sorted(s for s in sizes if s < native)


def size_candidates(specs: Sequence[BackboneSpec], image_size: int | None,
                    side: int | None) -> list[tuple[BackboneSpec, int | None]]:
    """(spec, size) pairs to score: each spec at `image_size` (None: its native size), then, where the user gave
    no size, at each smaller size the images' `side` calls for, cheapest-looking last (relative_cost orders)."""
    pairs: list[tuple[BackboneSpec, int | None]] = []
    for spec in specs:
        pairs.append((spec, image_size))
        if image_size is None and spec.modality == "image":
            pairs += [(spec, size) for size in smaller_sizes(spec.preprocess.size, side)]
    return pairs


def label(name: str, size: int | None) -> str:
    """How reasons name a candidate: the backbone alone at its native size, else `name @ SIZE px`."""
    return name if size is None else f"{name} @ {size} px"
