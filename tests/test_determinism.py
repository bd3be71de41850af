"""Determinism on CPU: the same seed gives identical metrics and weights; another seed gives others."""

import random

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE

import headstart as hs
from headstart.errors import HeadstartError
from headstart.methods.continual import ContinualSettings, train_incremental
from headstart.methods.pretrain import pretrain

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


def _seed_caller(seed: int = 123) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _draws() -> tuple:
    """What a caller draws from the three global generators."""
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def _draws_around(between) -> tuple:
    """The caller's draws after `between` ran, and the same draws had it not run."""
    _seed_caller()
    _draws()  # the caller is mid-sequence, not at a fresh seed
    expected = _draws()
    _seed_caller()
    _draws()
    between()
    return _draws(), expected


def test_fit_leaves_the_callers_random_state_alone(colour_folder):
    got, expected = _draws_around(lambda: _fit(colour_folder, seed=3))
    assert got == expected


def _raise(fn, *args, **kwargs):
    def run():
        with pytest.raises(HeadstartError):
            fn(*args, **kwargs)
    return run


@pytest.mark.parametrize("entry", ["fit", "multitask", "pretrain", "extend"])
def test_entry_points_that_seed_restore_the_callers_random_state_when_they_fail(entry, tmp_path):
    """Each of these seeds the global generators before it finds the problem with its input."""
    missing = str(tmp_path / "no-such-data")
    run = {
        "fit": _raise(hs.ImageClassifier(TINY, pretrained=False, verbose=False).fit, missing),
        "multitask": _raise(hs.MultiTaskModel(TINY, tasks={"label": "classification"}, verbose=False).fit, missing),
        "pretrain": _raise(pretrain, missing, TINY, modality="audio", verbose=False),
        "extend": _raise(train_incremental, torch.nn.Linear(4, 2), 3, np.zeros((6, 4), np.float32),
                         np.array([2] * 6), ContinualSettings(method="rehearsal"), memory=None),
    }[entry]
    got, expected = _draws_around(run)
    assert got == expected
