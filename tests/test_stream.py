"""The streamed head stage (stream.py): rows read from the cache's shards a batch at a time, never whole, solved
to the same objective as probe.py's in-memory solver, and giving the same answers where both fit."""

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE

import headstart as hs
from headstart import cache as cache_module
from headstart import stream
from headstart.cache import FeatureCache
from headstart.heads import HeadConfig, build_head
from headstart.probe import fit_probe
from headstart.stream import fit_streamed_probe, refit_streamed, streamed_scores


def gaussian_classes(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes as Gaussians around random means, shifted and scaled per feature (so standardising matters)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0, 0.6, (classes, dim))
    y = rng.integers(0, classes, n)
    x = means[y] + rng.normal(size=(n, dim))
    return (x * np.linspace(0.5, 3, dim) + 2.0).astype(np.float32), y


def cached(tmp_path, x: np.ndarray, shards: int) -> tuple[FeatureCache, list[str]]:
    cache = FeatureCache(str(tmp_path), "synthetic")
    digests = [f"row{i:07d}" for i in range(len(x))]
    for part in np.array_split(np.arange(len(x)), shards):
        cache.put([digests[i] for i in part], x[part])
    return cache, digests


def test_locate_keeps_the_order_asked_and_split_covers_every_row(tmp_path):
    x, _ = gaussian_classes(1000, 6, 3, 0)
    cache, digests = cached(tmp_path, x, 4)
    order = np.random.default_rng(1).permutation(1000)[:700]
    source, found = cache.locate([digests[i] for i in order] + ["absent"])
    assert found[:-1].all() and not found[-1] and len(source) == 700
    assert np.array_equal(np.concatenate([b for _, b in source.batches(64)]), x[order])
    halves = [source.split(r, 2) for r in range(2)]
    assert [len(h) for h in halves] == [350, 350]
    assert np.array_equal(np.concatenate([b for h in halves for _, b in h.batches(50)]), x[order])
    picked = np.array([699, 3, 350, 3])
    assert np.array_equal(source.take(picked), x[order][picked])


def test_streamed_solver_agrees_with_the_in_memory_one_and_never_reads_all_rows(tmp_path, monkeypatch):
    x, y = gaussian_classes(5000, 16, 4, 0)
    x_test, y_test = gaussian_classes(4000, 16, 4, 1)
    cache, digests = cached(tmp_path, x, 3)
    # 512 rows a batch: 10 batches a pass over the 5,000 training rows
    monkeypatch.setattr(cache_module, "BATCH_BYTES", 512 * 16 * 4)
    source, _ = cache.locate(digests)

    memory = build_head(HeadConfig(), 16, 4)
    chosen = fit_probe(memory, torch.as_tensor(x), torch.as_tensor(y), 4, seed=0)
    streamed = build_head(HeadConfig(), 16, 4)
    chosen_streamed = fit_streamed_probe(streamed, source, y, 4, seed=0)

    assert source.most_rows_read == 512, "every read is one batch at most, never the whole matrix"
    # the same subsample and search choose the same scaling and C
    assert (chosen_streamed["scaling"], chosen_streamed["C"]) == (chosen["scaling"], chosen["C"])
    assert chosen_streamed["streamed"]["rows"] == 5000
    with torch.no_grad():
        accuracy = [float((h(torch.as_tensor(x_test)).argmax(-1).numpy() == y_test).mean())
                    for h in (memory, streamed)]
        # the same function of the raw features: compare the maps, not the parameters of differing scalings
        slope = [h[2].weight / h[0].std for h in (memory, streamed)]
    assert accuracy[1] == pytest.approx(accuracy[0], abs=0.005)
    assert float((slope[1] - slope[0]).norm() / slope[0].norm()) < 0.02


def test_streamed_scores_and_refit(tmp_path):
    x, y = gaussian_classes(3000, 8, 3, 2)
    cache, digests = cached(tmp_path, x, 2)
    source, _ = cache.locate(digests)
    head = build_head(HeadConfig(), 8, 3)
    chosen = fit_streamed_probe(head, source, y, 3, seed=0)
    scores = streamed_scores(head, source, y)
    with torch.no_grad():
        logits = head(torch.as_tensor(x))
    assert scores["rows"] == 3000
    assert scores["accuracy"] == pytest.approx(float((logits.argmax(-1).numpy() == y).mean()))
    assert scores["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(y))),
                                           rel=1e-5)
    before = scores["accuracy"]
    refit = refit_streamed(head, source, y, 3, chosen)
    assert refit["rows"] == 3000 and refit["streamed"]["iterations"] <= 3, "refit on the same rows: already solved"
    assert streamed_scores(head, source, y)["accuracy"] == pytest.approx(before, abs=0.002)


def test_a_fit_above_the_threshold_streams_and_matches_one_below(fashion, tmp_path, monkeypatch):
    """The whole `features` fit on real photos, once in memory and once with the threshold lowered under its
    rows: the head stage and the final refit stream, and the model predicts what the in-memory one does."""
    train, test = fashion
    kwargs = {"backbone": TINY, "pretrained": False, "image_size": TINY_SIZE, "strategy": "features",
              "verbose": False, "cache_dir": str(tmp_path / "cache")}
    memory = hs.ImageClassifier(**kwargs).fit(train)
    monkeypatch.setattr(stream, "STREAM_MIN_ROWS", 10)
    streamed = hs.ImageClassifier(**{**kwargs, "cache_dir": str(tmp_path / "empty")}).fit(train)  # embeds too
    head_memory, head_streamed = memory.history_[0], streamed.history_[0]
    assert head_memory["solver"] == "logistic regression (L-BFGS)"
    assert head_streamed["solver"] == "logistic regression (streamed L-BFGS)"
    assert streamed.metrics_["refit"]["streamed"]["iterations"] >= 1
    assert (head_streamed["probe"]["scaling"], head_streamed["probe"]["C"]) == (head_memory["probe"]["scaling"],
                                                                                head_memory["probe"]["C"])
    assert head_streamed["val_accuracy"] == pytest.approx(head_memory["val_accuracy"], abs=0.02)
    agree = np.mean(np.array(memory.predict(test)) == np.array(streamed.predict(test)))
    assert agree >= 0.97
