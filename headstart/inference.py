"""Running a backbone or a whole model over images: batched, cached where the backbone is frozen."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ._runtime import cache_root
from .backbones import Backbone
from .backbones.base import ImagePreprocess
from .cache import FeatureCache, file_digests, model_key
from .data.images import ImageRowsDataset, collate_skipping, eval_transform
from .progress import make_progress


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def run_over_images(
    module: nn.Module,
    paths: Sequence[str],
    preprocess: ImagePreprocess,
    batch_size: int = 64,
    num_workers: int = 0,
    verbose: bool = True,
    description: str = "features",
) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of `module` for each image, and a mask of the images that decoded (their rows are zeros)."""
    device = _device()
    module = module.to(device).eval()
    ds = ImageRowsDataset(paths, None, eval_transform(preprocess))
    # Its own generator: iterating a loader draws a seed, and must not shift the global RNG that training
    # augmentations use (else a cache hit would change the next stage's results).
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skipping,
                        generator=torch.Generator())
    out: np.ndarray | None = None
    ok = np.zeros(len(paths), dtype=bool)
    with make_progress(verbose) as bar:
        task = bar.add_task(description, total=len(paths), info="")
        for idx, x, _ in loader:
            if x is not None and len(idx):
                y = module(x.to(device, non_blocking=True)).float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(paths), y.shape[1]), dtype=np.float32)
                out[idx.numpy()] = y
                ok[idx.numpy()] = True
            bar.update(task, completed=min(len(paths), bar.tasks[task].completed + batch_size))
    if out is None:
        out = np.zeros((len(paths), 0), dtype=np.float32)
    return out, ok


def feature_cache_for(backbone: Backbone, root: str | None = None) -> FeatureCache:
    key = model_key(backbone.spec.to_dict(), backbone.weights_id())
    return FeatureCache(root or cache_root(), key)


def embed_images(
    backbone: Backbone,
    paths: Sequence[str],
    batch_size: int = 64,
    num_workers: int = 0,
    use_cache: bool = True,
    cache_dir: str | None = None,
    verbose: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of a frozen backbone for each image, computed once and then read from the cache.

    Returns (features, ok): rows of undecodable images are zeros with ok=False.
    """
    paths = list(paths)
    if not use_cache:
        return run_over_images(backbone, paths, backbone.spec.preprocess, batch_size, num_workers, verbose)
    cache = feature_cache_for(backbone, cache_dir)
    digests = file_digests(paths)
    feats, found = cache.get(digests)
    missing = [i for i in range(len(paths)) if not found[i]]
    if feats is None:
        feats = np.zeros((len(paths), backbone.feature_dim), dtype=np.float32)
    ok = found.copy()
    if missing:
        new, new_ok = run_over_images(
            backbone, [paths[i] for i in missing], backbone.spec.preprocess, batch_size, num_workers, verbose
        )
        good = [j for j in range(len(missing)) if new_ok[j]]
        # Identical files share one digest: store each digest once.
        unique: dict[str, int] = {}
        for j in good:
            unique.setdefault(digests[missing[j]], j)
        cache.put(list(unique), new[list(unique.values())])
        for j in good:
            feats[missing[j]] = new[j]
            ok[missing[j]] = True
    return feats, ok
