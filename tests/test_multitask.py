"""Multi-task learning: one backbone, a head per label column, each with its own loss and metric; one bundle."""

import csv
import os

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE, checkpoints_written, interrupted_after_first_checkpoint, make_class_images

import headstart as hs
from headstart.bundle import read_bundle

COLOURS = {"red": (200, 40, 40), "orange": (220, 130, 30), "green": (40, 200, 40), "blue": (40, 40, 200)}
WARMTH = {"red": "warm", "orange": "warm", "green": "cool", "blue": "cool"}


def _table(root: str, per_class: int, seed: int) -> str:
    """A CSV with three label columns: colour (4 classes), warmth (2 coarse groups) and red level (a number)."""
    folder = make_class_images(os.path.join(root, "img"), COLOURS, per_class=per_class, seed=seed)
    path = os.path.join(root, "items.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "colour", "warmth", "red_level"])
        for colour in COLOURS:
            for name in sorted(os.listdir(os.path.join(folder, colour))):
                w.writerow([os.path.join(folder, colour, name), colour, WARMTH[colour], COLOURS[colour][0] / 255])
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    return (_table(str(tmp_path_factory.mktemp("mt-train")), 15, 0),
            _table(str(tmp_path_factory.mktemp("mt-test")), 8, 1))


TASKS = {"colour": "classification", "warmth": "classification", "red_level": "regression"}


def _model(**kw):
    params = dict(backbone=TINY, tasks=TASKS, image_size=TINY_SIZE, pretrained=False, epochs=60, lr=3e-3,
                  batch_size=16, verbose=False)
    return hs.MultiTaskModel(**{**params, **kw})


def test_every_task_is_learned_and_scored_with_its_own_metric(tables, tmp_path):
    train, test = tables
    model = _model(loss_weights={"warmth": 0.5}).fit(train)
    scores = model.evaluate(test)
    assert set(scores) == set(TASKS)
    assert scores["colour"]["accuracy"] >= 0.8 and len(scores["colour"]["per_class"]) == 4
    assert scores["warmth"]["accuracy"] >= 0.9 and set(scores["warmth"]["per_class"]) == {"cool", "warm"}
    assert scores["red_level"]["mae"] < 0.15 and "accuracy" not in scores["red_level"]
    images = os.path.join(os.path.dirname(test), "img")
    predictions = model.predict(images)
    assert {len(v) for v in predictions.values()} == {32}
    assert set(predictions["warmth"]) <= {"warm", "cool"}

    path = model.save(str(tmp_path / "mt.hs"))
    config, state = read_bundle(path)
    assert config["task"] == "multitask" and config["head"]["tasks"] == TASKS
    assert {k.split(".")[2] for k in state if k.startswith("heads.heads.")} == set(TASKS)
    again = hs.load(path)
    assert isinstance(again, hs.MultiTaskModel)
    before, after = model.predict_proba(images), again.predict_proba(images)
    for name in TASKS:
        assert np.array_equal(before[name], after[name]), name


def test_loss_weights_change_what_is_learned(tables):
    train, _ = tables
    a = _model(epochs=5).fit(train).predict_proba(train)["colour"]
    b = _model(epochs=5, loss_weights={"colour": 0.0}).fit(train).predict_proba(train)["colour"]
    assert not np.allclose(a, b)


def test_bad_task_definitions_are_user_errors(tables):
    train, _ = tables
    with pytest.raises(hs.HeadstartError, match="kind 'ranking'"):
        _model(tasks={"colour": "ranking"}).fit(train)
    with pytest.raises(hs.HeadstartError, match="not a task"):
        _model(loss_weights={"size": 1.0}).fit(train)
    with pytest.raises(hs.DataError, match="missing column 'shape'"):
        _model(tasks={"shape": "classification"}).fit(train)


def test_interrupted_fit_resumes_to_the_uninterrupted_weights(tables, tmp_path, monkeypatch):
    train, test = tables
    whole = _model(epochs=4).fit(train)
    run = str(tmp_path / "run")
    with interrupted_after_first_checkpoint(monkeypatch):
        _model(epochs=4, out_dir=run).fit(train)
    with pytest.raises(hs.HeadstartError, match=r"written for different 'colour' column and 'warmth' column and "
                                                r"'red_level' column data"):
        _model(epochs=4).fit(test, resume=run)
    with pytest.raises(hs.HeadstartError, match="written for a different run"):
        _model(epochs=5).fit(train, resume=run)
    with checkpoints_written(monkeypatch) as saved:
        resumed = _model(epochs=4).fit(train, resume=run)
    assert saved == [(0, 2), (0, 3), (0, 4)]
    for (name, a), b in zip(whole.heads_.state_dict().items(), resumed.heads_.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.metrics_ == whole.metrics_
    assert not os.path.exists(os.path.join(run, "checkpoint")), "a finished fit removes its checkpoint"
