"""Running a backbone or a whole model over inputs: batched, cached where the backbone is frozen."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ._runtime import cache_root, resolve_workers
from .backbones import Backbone
from .cache import FeatureCache, ShardRows, model_key
from .distributed import device, found_everywhere, is_main_process, my_share, run_sharded
from .modalities import modality_of
from .progress import make_progress


def _device() -> torch.device:
    return device()  # under a multi-GPU launch, this process's own GPU


def _to(x, device: torch.device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    return {k: v.to(device, non_blocking=True) for k, v in x.items()}  # tokenized text


def run_over(
    module: nn.Module,
    items: Sequence,
    batch_size: int = 32,
    num_workers: int | None = None,
    verbose: bool = True,
    description: str = "features",
) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of `module` (a Backbone, or a model holding one as `.backbone`) for each input, and a mask of the
    inputs that could be read (their rows are zeros)."""
    backbone: Backbone = module if isinstance(module, Backbone) else module.backbone
    modality = modality_of(backbone)
    device = _device()
    # Moved before inference mode: parameters moved inside it would become inference tensors, which training
    # and the weights' version counter (cache keys) can no longer use.
    module = module.to(device).eval()
    # Its own generator: iterating a loader draws a seed, and must not shift the global RNG that training
    # augmentations use (else a cache hit would change the next stage's results).
    # Batches in the modality's preferred order (texts: by length, so padding is short); each batch carries its
    # rows' own indices, so outputs land where they belong whatever the order.
    order = getattr(modality, "inference_order", lambda _: None)(items)
    loader = DataLoader(modality.dataset(items, None, backbone, train=False), batch_size=batch_size,
                        sampler=order, num_workers=resolve_workers(num_workers),
                        collate_fn=modality.collate(backbone), generator=torch.Generator(),
                        pin_memory=device.type == "cuda")
    out: np.ndarray | None = None
    ok = np.zeros(len(items), dtype=bool)
    with make_progress(verbose) as bar, torch.inference_mode():
        task = bar.add_task(description, total=len(items), info="")
        for idx, x, _ in loader:
            if x is not None and len(idx):
                y = module(_to(x, device)).float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(items), y.shape[1]), dtype=np.float32)
                out[idx.numpy()] = y
                ok[idx.numpy()] = True
            bar.update(task, completed=min(len(items), bar.tasks[task].completed + batch_size))
    if out is None:
        out = np.zeros((len(items), 0), dtype=np.float32)
    return out, ok


def feature_cache_for(backbone: Backbone, root: str | None = None) -> FeatureCache:
    key = model_key(backbone.spec.to_dict(), backbone.weights_id())
    return FeatureCache(root or cache_root(), key)


def embed(
    backbone: Backbone,
    items: Sequence,
    batch_size: int = 32,
    num_workers: int | None = None,
    use_cache: bool = True,
    cache_dir: str | None = None,
    verbose: bool = True,
    local: bool = False,
    digests: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of a frozen backbone for each input, computed once and then read from the cache.

    Returns (features, ok): rows of unreadable inputs are zeros with ok=False. `local`: this process alone
    computes and caches every missing row (cached_rows gives each process its own share of the inputs), with no
    collective and no gather. `digests`: the inputs' content hashes, when the caller already has them.
    """
    items = list(items)
    if backbone.spec.source == "pair":  # features end to end (backbones/pair.py): each part from its own cache
        parts = [embed(part, items, batch_size, num_workers, use_cache, cache_dir, verbose)
                 for part in (backbone.body.first, backbone.body.second)]
        ok = parts[0][1] & parts[1][1]
        return np.concatenate([f for f, _ in parts], axis=1) * ok[:, None], ok
    if not use_cache or not backbone.cache_features:
        return run_over(backbone, items, batch_size, num_workers, verbose)
    cache = feature_cache_for(backbone, cache_dir)
    digests = digests if digests is not None else modality_of(backbone).digests(items)
    feats, found = cache.get(digests)

    if not local:
        found = found_everywhere(found)  # processes must agree on what to compute (their caches may differ)
    if feats is None:
        feats = np.zeros((len(items), backbone.feature_dim), dtype=np.float32)
    ok = found.copy()
    missing = np.flatnonzero(~found)
    new, good = compute_missing(backbone, items, digests, missing, cache, batch_size, num_workers, verbose, local)
    if len(good):  # none readable: `new` may be zero features wide (run_over)
        feats[missing[good]] = new[good]
        ok[missing[good]] = True
    return feats, ok


def compute_missing(backbone: Backbone, items: Sequence, digests: Sequence[str], missing: np.ndarray,
                    cache: FeatureCache, batch_size: int, num_workers: int | None, verbose: bool,
                    local: bool) -> tuple[np.ndarray, np.ndarray]:
    """Features of `items[missing]`, computed and written to `cache` once per digest: (their rows, the indices
    into `missing` of those whose input could be read). `local`: as embed's."""
    if not len(missing):
        return np.zeros((0, backbone.feature_dim), dtype=np.float32), np.zeros(0, dtype=np.int64)

    def run(part: list) -> tuple[np.ndarray, np.ndarray]:
        return run_over(backbone, part, batch_size, num_workers, verbose)

    # several processes (accelerate launch / torchrun) each compute a share and gather the rest, unless local
    todo = [items[i] for i in missing]
    new, new_ok = run(todo) if local else run_sharded(run, todo)
    good = np.flatnonzero(new_ok)
    # Identical inputs share one digest: store each digest once.
    unique: dict[str, int] = {}
    for j in good.tolist():
        unique.setdefault(digests[missing[j]], j)
    if unique and (local or is_main_process()):  # one writer per cache; per shard, when each caches its own rows
        cache.put(list(unique), new[list(unique.values())])
    return new, good


# Inputs embedded (and their shard written) per call of cached_rows: its memory holds one chunk's features, and a
# crash loses at most one chunk's work.
STREAM_CHUNK = 50_000


def cached_rows(backbone: Backbone, items: Sequence, batch_size: int = 32, num_workers: int | None = None,
                cache_dir: str | None = None, verbose: bool = True) -> tuple[ShardRows, np.ndarray]:
    """This process's share of `items` (all of them in a single process) embedded into the cache a chunk at a
    time, never gathered: (where their rows are on disk, the positions in `items` of the rows found, in the
    rows' order). Under several processes each extracts, caches and keeps only its own share.

    One FeatureCache for the whole call: its index is read once and each chunk's new shard merged into it
    (cache_index.DigestIndex.add), where an index read again per chunk made the time quadratic in the rows. Each
    chunk's digests are dropped once its rows are located, so what the call holds per input is its place on
    disk (a few parts, where the cache was written in the inputs' order) and a found flag."""
    share = my_share(len(items))
    modality = modality_of(backbone)
    cache = feature_cache_for(backbone, cache_dir)
    cache.reserve(len(share))  # room for every row this call may write: the index is never copied to grow
    parts: list[tuple[str, range]] = []
    found = np.zeros(len(share), dtype=bool)
    dim = 0
    for start in range(0, len(share), STREAM_CHUNK):
        chunk = [items[i] for i in share[start:start + STREAM_CHUNK]]
        digests = modality.digests(chunk)
        missing = np.flatnonzero(~cache.locate(digests)[1])
        compute_missing(backbone, chunk, digests, missing, cache, batch_size, num_workers, verbose, local=True)
        source, found[start:start + len(chunk)] = cache.locate(digests)
        parts.extend(source.parts)
        dim = max(dim, source.dim)
    return ShardRows(joined_runs(parts), dim), share.start + np.flatnonzero(found)


def joined_runs(parts: list[tuple[str, range]]) -> list[tuple[str, range]]:
    """Parts with each run that continues the one before it (same shard, next rows) joined to it: one chunk's
    rows often go on where the last chunk's stopped."""
    out: list[tuple[str, range]] = []
    for path, rows in parts:
        if out and out[-1][0] == path and out[-1][1].stop == rows.start:
            out[-1] = (path, range(out[-1][1].start, rows.stop))
        else:
            out.append((path, rows))
    return out


embed_images = embed  # the name the image benchmarks and older callers use
