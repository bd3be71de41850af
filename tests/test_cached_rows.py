"""inference.cached_rows: a chunk of inputs at a time into the cache, with one index for the whole call (read once,
each chunk's shard merged in) and no list of every input's digest, answering as the call it replaced did."""

from __future__ import annotations

import os

import numpy as np
from conftest import COLOURS, TINY, TINY_SIZE, make_class_images

import headstart as hs
from headstart import inference
from headstart.cache import FeatureCache, ShardRows
from headstart.modalities import modality_of


def count_builds(monkeypatch) -> list[int]:
    """Every time a FeatureCache reads its index from the shards on disk."""
    built: list[int] = []
    load = FeatureCache._load_index

    def counted(self: FeatureCache):
        if self._index is None:
            built.append(1)
        return load(self)

    monkeypatch.setattr(FeatureCache, "_load_index", counted)
    return built


def the_old_way(backbone, items, root) -> tuple[ShardRows, np.ndarray]:
    """cached_rows as it was: a chunk at a time through embed, then every digest located at once."""
    digests = modality_of(backbone).digests(items)
    for start in range(0, len(items), inference.STREAM_CHUNK):
        inference.embed(backbone, items[start:start + inference.STREAM_CHUNK], cache_dir=root, verbose=False,
                        local=True, digests=digests[start:start + inference.STREAM_CHUNK])
    source, found = FeatureCache(root, inference.feature_cache_for(backbone).dir.split(os.sep)[-1]).locate(digests)
    return source, np.arange(len(items))[found]


def test_one_index_per_call_and_the_rows_the_old_way_found(tmp_path, monkeypatch):
    folder = make_class_images(str(tmp_path / "images"), COLOURS, per_class=12)
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    items = paths[:20] + [str(broken)] + paths[:3] + paths[20:]  # a repeat and an unreadable input
    backbone = hs.create_backbone(TINY, pretrained=False, image_size=TINY_SIZE)
    monkeypatch.setattr(inference, "STREAM_CHUNK", 7)  # six chunks, six shards
    built = count_builds(monkeypatch)
    root = str(tmp_path / "new")
    source, positions = inference.cached_rows(backbone, items, cache_dir=root, verbose=False)
    assert built == [1], "the index is read once, before the first shard, and every shard merged into it"
    shards = [f for f in os.listdir(inference.feature_cache_for(backbone, root).dir) if f.endswith(".json")]
    assert len(shards) == 6  # one per chunk, as before
    want_source, want_positions = the_old_way(backbone, items, str(tmp_path / "old"))
    assert np.array_equal(positions, want_positions) and 20 not in positions.tolist()
    assert len(source) == len(want_source) == len(items) - 1 and source.dim == want_source.dim
    np.testing.assert_array_equal(source.take(np.arange(len(source))), want_source.take(np.arange(len(source))))
    feats, ok = inference.embed(backbone, items, cache_dir=root, verbose=False)
    np.testing.assert_array_equal(source.take(np.arange(len(source))), feats[positions])
    # a cache written in the inputs' order: its parts are runs, joined across the chunks' boundaries
    again = count_builds(monkeypatch)
    ran: list[str] = []

    def run_over(module, part, *args, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        ran.extend(part)
        return np.zeros((len(part), 0), np.float32), np.zeros(len(part), dtype=bool)

    monkeypatch.setattr(inference, "run_over", run_over)
    source2, positions2 = inference.cached_rows(backbone, items, cache_dir=root, verbose=False)
    assert again == [1] and ran == [str(broken)]  # warm: read once; only the unreadable input is tried again
    assert source2 == source and np.array_equal(positions2, positions)
    assert len(source2.parts) <= len(shards) + 2
