"""The feature cache's digest index (cache_index.py): sorted NumPy keys answer every look-up exactly as the
dictionary of Python strings it replaced did, in a few dozen bytes a row."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from headstart.cache import FeatureCache, ShardRows


def hexes(lo: int, hi: int) -> list[str]:
    """Digests as headstart writes them: 32 lowercase hexadecimal characters (file_digest, text digests)."""
    return [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(lo, hi)]


def put_named(cache: FeatureCache, name: str, digests: list[str], rows: np.ndarray) -> None:
    """A shard under a chosen name, so the test fixes which shard comes last in name order."""
    os.makedirs(cache.dir, exist_ok=True)
    np.save(os.path.join(cache.dir, f"shard-{name}.npy"), rows.astype(np.float32))
    with open(os.path.join(cache.dir, f"shard-{name}.json"), "w") as f:
        json.dump({"digests": digests}, f)


def reference(cache: FeatureCache, digests: list[str]):
    """The dictionary index as it was (main before issue 29): locate's parts and mask, get's rows and mask."""
    index: dict[str, tuple[np.ndarray, int]] = {}
    if os.path.isdir(cache.dir):
        for name in sorted(os.listdir(cache.dir)):
            if not (name.startswith("shard-") and name.endswith(".json")):
                continue
            base = os.path.join(cache.dir, name[: -len(".json")])
            try:
                with open(base + ".json") as f:
                    names = json.load(f)["digests"]
                rows = np.load(base + ".npy", mmap_mode="r")
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                continue
            if rows.ndim != 2 or rows.shape[0] != len(names):
                continue
            for i, d in enumerate(names):
                index[d] = (rows, i)
    found = np.array([d in index for d in digests], dtype=bool)
    paths = [index[d][0].filename for d in digests if d in index]
    rows = [index[d][1] for d in digests if d in index]
    parts, start = [], 0
    for i in range(1, len(paths) + 1):
        if i == len(paths) or paths[i] != paths[start] or rows[i] != rows[i - 1] + 1:
            parts.append((paths[start], range(rows[start], rows[i - 1] + 1)))
            start = i
    dim = next(iter(index.values()))[0].shape[1] if index else 0
    got = np.zeros((len(digests), dim), dtype=np.float32)
    for i, d in enumerate(digests):
        if d in index:
            got[i] = index[d][0][index[d][1]]
    return ShardRows(parts, dim), found, (got if found.any() else None)


def same_as_the_dictionary(root, digests: list[str]) -> None:
    want_rows, want_found, want_get = reference(FeatureCache(str(root), "k"), digests)
    source, found = FeatureCache(str(root), "k").locate(digests)
    assert source == want_rows and source.dim == want_rows.dim
    assert np.array_equal(found, want_found) and found.dtype == bool and found.shape == (len(digests),)
    got, found = FeatureCache(str(root), "k").get(digests)
    assert np.array_equal(found, want_found)
    assert (got is None) == (want_get is None)
    if got is not None:
        assert got.dtype == np.float32 and np.array_equal(got, want_get)


def test_overlapping_shards_missing_digests_and_repeats_answer_as_the_dictionary(tmp_path):
    cache = FeatureCache(str(tmp_path), "k")
    rng = np.random.default_rng(0)
    ids = hexes(0, 1000)
    put_named(cache, "a", ids[:400], rng.normal(size=(400, 5)))
    put_named(cache, "b", ids[300:700], rng.normal(size=(400, 5)))  # 300..399 again: shard b wins
    put_named(cache, "c", ids[650:1000] + [ids[10]], rng.normal(size=(351, 5)))  # and c over both
    put_named(cache, "d", ids[20:22] + ids[20:21], rng.normal(size=(3, 5)))  # twice in one shard: its last row
    missing = hexes(5000, 5100)
    asked = [ids[i] for i in rng.permutation(1000)] + missing + ids[:50] + ids[:50]
    same_as_the_dictionary(tmp_path, asked)
    same_as_the_dictionary(tmp_path, ids)  # in order: a few long parts
    same_as_the_dictionary(tmp_path, missing)  # nothing found: get gives None
    same_as_the_dictionary(tmp_path, [])
    # not lowercase hexadecimal of the cached length: never cached, so not found (the keys are packed bytes)
    same_as_the_dictionary(tmp_path, [ids[0].upper(), ids[0][:-2], ids[0] + "00", " " + ids[0][1:], "", "x"])
    assert sorted(cache.digests()) == sorted(set(ids)) and cache._load_index().hex_length == 32


def test_digests_of_any_form_and_length_stay_exact(tmp_path):
    cache = FeatureCache(str(tmp_path), "k")
    rng = np.random.default_rng(1)
    ids = hexes(0, 200)
    texts = ["row1", "row1\x00", "row1\x00\x00", "", "é", "\ud800", "a" * 300, ids[5].upper(), ids[7] + "\x00"]
    put_named(cache, "a", ids[:100], rng.normal(size=(100, 3)))  # packed first, re-encoded when c comes
    put_named(cache, "b", ids[100:200] + [ids[3] + "0"], rng.normal(size=(101, 3)))
    put_named(cache, "c", texts + ids[50:60], rng.normal(size=(len(texts) + 10, 3)))
    asked = ids + texts + ["row1\x00\x00\x00", "a" * 301, "a" * 299, ids[3] + "0", ids[3] + "00", "\ud801", "absent"]
    same_as_the_dictionary(tmp_path, asked)
    assert sorted(cache.digests()) == sorted(set(ids + texts + [ids[3] + "0"]))
    assert cache._load_index().hex_length is None
    # a digest of odd length first: every key as text from the start
    odd = tmp_path / "odd"
    put_named(FeatureCache(str(odd), "k"), "a", ["abc", "ab", "ab\x00"], rng.normal(size=(3, 2)))
    put_named(FeatureCache(str(odd), "k"), "b", ids[:20], rng.normal(size=(20, 2)))
    same_as_the_dictionary(odd, ["ab", "abc", "ab\x00", "ab\x00\x00", "a"] + ids[:30])


def test_an_empty_or_missing_cache_and_damaged_shards(tmp_path):
    same_as_the_dictionary(tmp_path, hexes(0, 5))  # no directory at all
    cache = FeatureCache(str(tmp_path), "k")
    os.makedirs(cache.dir)
    same_as_the_dictionary(tmp_path, hexes(0, 5))  # a directory with no shard
    ids = hexes(0, 60)
    rng = np.random.default_rng(2)
    put_named(cache, "a", ids[:20], rng.normal(size=(20, 4)))
    put_named(cache, "b", ids[20:40], rng.normal(size=(19, 4)))  # rows and digests disagree: skipped
    put_named(cache, "c", ids[40:60], rng.normal(size=(20, 4)))
    with open(os.path.join(cache.dir, "shard-c.json"), "w") as f:
        f.write('{"digests": ["' + ids[40])  # cut short by a crash: skipped
    np.save(os.path.join(cache.dir, "shard-d.npy"), np.zeros((3, 4), np.float32))  # an orphan array: ignored
    put_named(cache, "e", [], np.zeros((0, 4)))  # an empty shard
    put_named(cache, "f", ids[:5], rng.normal(size=(5, 4, 1)))  # not a matrix: skipped
    put_named(cache, "g", ids[50:60] + ids[:2], rng.normal(size=(12, 4)))  # after the skipped ones
    same_as_the_dictionary(tmp_path, ids)
    found = FeatureCache(str(tmp_path), "k").locate(ids)[1]
    assert found[:20].all() and not found[20:50].any() and found[50:].all()


def test_the_index_takes_a_few_dozen_bytes_a_row(tmp_path):
    """200,000 digests in four shards of one-wide features: packed keys, shard numbers and rows, nothing else."""
    cache = FeatureCache(str(tmp_path), "k")
    n = 200_000
    ids = [f"{i:032x}" for i in range(n)]
    for part in np.array_split(np.arange(n), 4):
        cache.put([ids[i] for i in part], np.zeros((len(part), 1), np.float32))
    index = cache._load_index()
    assert len(index) == n and index.nbytes <= 24 * n  # 16-byte keys and a 4-byte position
    found = cache.locate(ids[::-1] + ["absent"])[1]
    assert found[:-1].all() and not found[-1]
    # digests of another form are stored as text: still a fixed width, a few dozen bytes
    texts = FeatureCache(str(tmp_path / "t"), "k")
    texts.put([f"row{i:07d}" for i in range(n)], np.zeros((n, 1), np.float32))
    assert texts._load_index().nbytes <= 64 * n
