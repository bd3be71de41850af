"""ShardRows reads rows from the shard files (shard_io.py) into one reused buffer, and the streamed head takes
class numbers of any integer width: the same rows, the same head and scores as before, less memory."""

from __future__ import annotations

import numpy as np
import torch
from test_stream import cached, gaussian_classes

from headstart.cache import ShardRows
from headstart.heads import HeadConfig, build_head
from headstart.stream import fit_streamed_probe, streamed_scores


def test_file_reads_give_the_mapped_rows_and_reuse_one_buffer(tmp_path):
    x, _ = gaussian_classes(900, 5, 3, 0)
    cache, digests = cached(tmp_path, x, 3)
    order = np.random.default_rng(2).permutation(900)[:600]
    source, _ = cache.locate([digests[i] for i in order])
    fresh = [b for _, b in source.batches(64)]
    assert np.array_equal(np.concatenate(fresh), x[order])
    buffers, reused = set(), []
    for _, b in source.batches(64, reuse=True):
        buffers.add(b.__array_interface__["data"][0])
        reused.append(b.copy())
    assert np.array_equal(np.concatenate(reused), x[order]) and len(buffers) == 1
    picked = np.array([599, 0, 300, 0, 17])
    assert np.array_equal(source.take(picked), x[order][picked])


def test_shards_of_another_layout_are_read_through_a_mapping(tmp_path):
    rows = np.arange(40, dtype=np.float64).reshape(10, 4)
    paths = [str(tmp_path / "f64.npy"), str(tmp_path / "fortran.npy")]
    np.save(paths[0], rows)
    np.save(paths[1], np.asfortranarray(rows.astype(np.float32)))
    source = ShardRows.of_shards(paths)
    got = np.concatenate([b for _, b in source.batches(3, reuse=True) for b in [b.copy()]])
    assert got.dtype == np.float32 and np.array_equal(got, np.concatenate([rows, rows]).astype(np.float32))
    assert np.array_equal(source.take(np.array([12, 1])), rows[[2, 1]].astype(np.float32))


def test_narrow_class_numbers_fit_the_same_head(tmp_path):
    x, y = gaussian_classes(2000, 6, 3, 1)
    cache, digests = cached(tmp_path, x, 2)
    source, _ = cache.locate(digests)
    heads, scores = [], []
    for targets in (y.astype(np.int64), y.astype(np.int16)):
        head = build_head(HeadConfig(), 6, 3)
        chosen = fit_streamed_probe(head, source, targets, 3, seed=0)
        heads.append((head, chosen))
        scores.append(streamed_scores(head, source, targets))
    assert heads[0][1] == heads[1][1] and scores[0] == scores[1]
    assert all(torch.equal(a, b) for a, b in zip(heads[0][0].state_dict().values(),
                                                 heads[1][0].state_dict().values()))
