"""Determinism on CPU: the same seed gives identical metrics and weights; another seed gives others."""

import torch
from conftest import TINY, TINY_SIZE

import headstart as hs

_TIMINGS = ("seconds", "samples_per_s")


def _fit(data: str, seed: int) -> hs.ImageClassifier:
    # two stages: the cached-feature head, then fine-tuning with augmentation, shuffling and a schedule
    return hs.ImageClassifier(TINY, strategy="two-stage", pretrained=False, image_size=TINY_SIZE, head_epochs=3,
                              epochs=1, seed=seed, verbose=False).fit(data)


def _curves(clf: hs.ImageClassifier) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in _TIMINGS} for r in clf.history_]


def test_same_seed_same_metrics_and_weights(colour_folder):
    first, second = _fit(colour_folder, seed=3), _fit(colour_folder, seed=3)
    assert _curves(first) == _curves(second)
    assert first.metrics_["validation"] == second.metrics_["validation"]
    for (name, a), b in zip(first.model_.state_dict().items(), second.model_.state_dict().values()):
        assert torch.equal(a, b), name

    other = _fit(colour_folder, seed=4)
    assert _curves(other) != _curves(first), "the seed must matter, or the comparison above proves nothing"
