"""Shards written through a FeatureCache whose index is built are merged into it (DigestIndex.add), and every
look-up answers as an index built again from the shards on disk would."""

from __future__ import annotations

import types

import numpy as np
from test_cache_index import hexes, put_named, same_as_the_dictionary

from headstart import cache as cache_module
from headstart import cache_index
from headstart.cache import FeatureCache


def put_as(monkeypatch, cache: FeatureCache, name: str, digests: list[str], rows: np.ndarray) -> None:
    """cache.put, the shard named `shard-<name>` (12 characters), so the test fixes the name order."""
    monkeypatch.setattr(cache_module.uuid, "uuid4", lambda: types.SimpleNamespace(hex=name))
    cache.put(digests, rows.astype(np.float32))
    monkeypatch.undo()


def merged_answers_as_rebuilt(root, cache: FeatureCache, asked: list[str]) -> None:
    fresh = FeatureCache(str(root), "k")
    got, want = cache.locate(asked), fresh.locate(asked)
    assert got[0] == want[0] and got[0].dim == want[0].dim and np.array_equal(got[1], want[1])
    feats, found = cache.get(asked)
    feats_fresh, found_fresh = fresh.get(asked)
    assert np.array_equal(found, found_fresh) and (feats is None) == (feats_fresh is None)
    if feats is not None:
        assert np.array_equal(feats, feats_fresh)
    assert sorted(cache.digests()) == sorted(fresh.digests())
    same_as_the_dictionary(root, asked)


def test_added_shards_answer_as_a_rebuild_whatever_their_names(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    ids = hexes(0, 3000)
    cache = FeatureCache(str(tmp_path), "k")
    put_named(cache, "m00000000000", ids[:1000], rng.normal(size=(1000, 4)))
    cache.reserve(500)  # room for one of the shards below; the next ones grow the index
    index = cache._load_index()
    monkeypatch.setattr(cache_index, "MERGE_CHUNK", 64)  # many merge steps
    put_as(monkeypatch, cache, "z00000000000", ids[900:1400], rng.normal(size=(500, 4)))  # later: wins 900..999
    put_as(monkeypatch, cache, "a00000000000", ids[1300:1600] + ids[5:7], rng.normal(size=(302, 4)))  # earlier
    put_as(monkeypatch, cache, "n00000000000", ids[1500:3000] + ids[20:22] + ids[20:21], rng.normal(size=(1503, 4)))
    assert cache._index is index and len(index.paths) == 4  # merged, never read again
    asked = [ids[i] for i in rng.permutation(3000)] + hexes(9000, 9050) + ids[:40]
    merged_answers_as_rebuilt(tmp_path, cache, asked)
    merged_answers_as_rebuilt(tmp_path, cache, ids)


def test_a_shard_sorting_first_sets_the_width_and_text_digests_merge_too(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    cache = FeatureCache(str(tmp_path), "k")
    put_named(cache, "m00000000000", [f"row{i}" for i in range(50)], rng.normal(size=(50, 3)))
    index = cache._load_index()
    assert index.hex_length is None
    put_as(monkeypatch, cache, "a00000000000", [f"row{i}" for i in range(40, 90)], rng.normal(size=(50, 3)))
    assert cache._index is index and index.first_digest == "row40"
    merged_answers_as_rebuilt(tmp_path, cache, [f"row{i}" for i in range(100)])


def test_a_first_shard_is_the_index_and_what_cannot_be_merged_is_read_again(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    cache = FeatureCache(str(tmp_path), "k")
    assert cache.get(hexes(0, 3))[0] is None
    put_as(monkeypatch, cache, "b00000000000", hexes(0, 30), rng.normal(size=(30, 2)))
    index = cache._index  # an empty index: the shard alone is the index, built from what was just written
    assert index is not None and index.hex_length == 32
    merged_answers_as_rebuilt(tmp_path, cache, hexes(0, 40))
    put_as(monkeypatch, cache, "c00000000000", ["not hexadecimal", *hexes(30, 32)], rng.normal(size=(3, 2)))
    assert cache._index is None  # packed keys cannot hold it: built again, as text
    merged_answers_as_rebuilt(tmp_path, cache, hexes(0, 40) + ["not hexadecimal"])
    assert cache._index is not index and cache._index.hex_length is None
    text = cache._index
    put_as(monkeypatch, cache, "d00000000000", ["a much longer digest than any cached so far"], rng.normal(size=(1, 2)))
    assert cache._index is None and text.width < 40
    merged_answers_as_rebuilt(tmp_path, cache, ["a much longer digest than any cached so far", "not hexadecimal"])
