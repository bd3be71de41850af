"""Continual learning: herding, head growth, and `extend` end to end (fit on two classes, add a third)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE, checkpoints_written, interrupted_after_first_checkpoint, make_class_images

import headstart as hs
from headstart.heads import HeadConfig, build_head
from headstart.methods.continual import ContinualSettings, grow_head
from headstart.methods.exemplars import herding

OLD = {"red": (200, 40, 40), "green": (40, 200, 40)}
NEW = {"blue": (40, 40, 200), "yellow": (220, 220, 40)}  # the loaders need two classes or more


def test_herding_picks_distinct_rows_whose_mean_tracks_the_class_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)) + rng.normal(size=16)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    picked = herding(x, 10)
    assert len(set(picked.tolist())) == 10
    gap = np.linalg.norm(unit[picked].mean(0) - unit.mean(0))
    random_gaps = [np.linalg.norm(unit[rng.choice(200, 10, replace=False)].mean(0) - unit.mean(0)) for _ in range(50)]
    assert gap < min(random_gaps), "herding must beat every random draw of the same size"


def test_grown_head_keeps_old_outputs():
    head = build_head(HeadConfig(), 8, 2)
    x = torch.randn(5, 8)
    grown = grow_head(head, 4)
    with torch.no_grad():
        assert grown(x).shape == (5, 4)
        assert torch.allclose(grown(x)[:, :2], head(x), atol=1e-6)


def test_unknown_method_is_a_user_error():
    with pytest.raises(hs.HeadstartError, match="unknown continual method"):
        ContinualSettings(method="magic")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("continual")
    old = make_class_images(str(root / "old"), OLD, per_class=16, seed=0)
    new = make_class_images(str(root / "new"), NEW, per_class=16, seed=1)
    both = make_class_images(str(root / "test"), {**OLD, **NEW}, per_class=10, seed=2)
    return old, new, both


def _fit(old: str, memory: int) -> hs.ImageClassifier:
    return hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="features",
                              head_epochs=40, lr=1e-2, batch_size=8, memory=memory, verbose=False).fit(old)


def test_rehearsal_keeps_old_classes_that_finetuning_forgets(folders, tmp_path):
    old, new, both = folders
    bundle = _fit(old, memory=5).save(str(tmp_path / "m.hs"))
    reports = {}
    for method in ("finetune", "rehearsal", "lwf", "ewc"):
        model = hs.load(bundle)
        assert len(model.memory_) == 10, "the exemplar buffer must travel in the bundle"
        model.extend(new, method=method, valid=both, epochs=40, lr=1e-2, memory_per_class=5)
        reports[method] = model.last_extension_
        assert model.classes_ == ["green", "red", "blue", "yellow"]
        assert model.predict_proba(both).shape == (40, 4)
    for r in reports.values():
        assert r["before"]["old_accuracy"] >= 0.8 and r["before"]["new_accuracy"] == 0.0
        assert r["after"]["new_accuracy"] >= 0.8
    assert reports["finetune"]["forgetting"] >= 0.3, "fine-tuning on new classes alone forgets"
    for method in ("rehearsal", "lwf", "ewc"):
        # 1e-9: forgetting is a difference of accuracies over 20 rows, and 0.7 - 0.2 is 0.49999999999999994
        assert reports[method]["forgetting"] <= reports["finetune"]["forgetting"] - 0.2 + 1e-9, method


def test_extended_bundle_round_trips_with_its_buffer(folders, tmp_path):
    old, new, both = folders
    model = _fit(old, memory=4)
    model.extend(new, method="rehearsal", epochs=10, lr=1e-2, memory_per_class=4)
    assert model.last_extension_["before"]["old_accuracy"] is None  # no old-class validation data given
    path = model.save(str(tmp_path / "ext.hs"))
    again = hs.load(path)
    assert again.classes_ == model.classes_ and len(again.memory_) == 16
    assert np.array_equal(again.memory_.labels, model.memory_.labels)
    assert np.array_equal(again.predict_proba(both), model.predict_proba(both))
    assert again.continual_[0]["method"] == "rehearsal"


def test_rehearsal_without_a_buffer_says_how_to_get_one(folders):
    old, new, _ = folders
    model = _fit(old, memory=0)
    with pytest.raises(hs.HeadstartError, match="memory"):
        model.extend(new, method="rehearsal")
    model.extend(new, method="rehearsal", old_data=old, epochs=5, memory_per_class=3)  # builds one from old data
    assert len(model.memory_) == 12


def test_cli_extend_writes_a_bundle_and_a_report(folders, tmp_path):
    old, new, both = folders
    bundle = _fit(old, memory=3).save(str(tmp_path / "m.hs"))
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", "extend", bundle, new, "--valid", both,
                           "--method", "lwf", "--epochs", "10", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["method"] == "lwf" and report["new_classes"] == ["blue", "yellow"]
    assert os.path.isfile(report["bundle"]) and hs.load(report["bundle"]).classes_ == ["green", "red", "blue", "yellow"]


def test_interrupted_extend_resumes_to_the_uninterrupted_head(folders, tmp_path, monkeypatch):
    old, new, both = folders
    bundle = _fit(old, memory=3).save(str(tmp_path / "m.hs"))
    options = dict(method="ewc", valid=both, epochs=4, lr=1e-2, memory_per_class=3)
    whole = hs.load(bundle).extend(new, **options)
    run = str(tmp_path / "run")
    with interrupted_after_first_checkpoint(monkeypatch):
        hs.load(bundle).extend(new, **options, out_dir=run)
    with pytest.raises(hs.HeadstartError, match=r"run/checkpoint/checkpoint.safetensors: written for different "
                                                r"training data"):
        hs.load(bundle).extend(both, **options, resume=run)
    with checkpoints_written(monkeypatch) as saved:
        resumed = hs.load(bundle).extend(new, **options, resume=run)
    assert saved == [(0, 2), (0, 3), (0, 4)]
    for (name, a), b in zip(whole.model_.head.state_dict().items(), resumed.model_.head.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.last_extension_ == whole.last_extension_
    assert not os.path.exists(os.path.join(run, "checkpoint")), "a finished extension removes its checkpoint"


def test_cli_extend_resume_without_a_checkpoint_says_so(folders, tmp_path):
    old, new, _ = folders
    bundle = _fit(old, memory=3).save(str(tmp_path / "m.hs"))
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", "extend", bundle, new, "--resume", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no checkpoint to resume from" in proc.stderr, proc.stderr[-2000:]
