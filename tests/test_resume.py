"""Crash safety: a training process killed mid-run (SIGKILL) resumes from its last epoch checkpoint and ends with
the same, complete bundle an uninterrupted run writes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import COLOURS, TINY, TINY_SIZE, make_class_images
from safetensors import safe_open
from typer.testing import CliRunner

import headstart as hs
from headstart.bundle import read_bundle
from headstart.checkpoint import FILE, FOLDER, Checkpointer
from headstart.cli import app

FIT_ARGS = ["--backbone", TINY, "--scratch", "--image-size", str(TINY_SIZE), "--strategy", "two-stage",
            "--head-epochs", "4", "--epochs", "4", "--quiet"]


def _checkpoint_position(out: str) -> tuple[int, int] | None:
    path = os.path.join(out, FOLDER, FILE)
    if not os.path.exists(path):
        return None
    with safe_open(path, framework="pt") as f:  # replaced atomically: never seen half-written
        header = json.loads(f.metadata()["headstart"])
    return header["stage"], header["epoch"]


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return make_class_images(str(tmp_path_factory.mktemp("resume") / "train"), COLOURS, per_class=10)


def test_killed_run_resumes_to_the_uninterrupted_result(data, tmp_path):
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "headstart.cli", "fit", data, *FIT_ARGS, "--out", killed],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Kill as soon as the fine-tuning stage (the second) has checkpointed its first epoch: mid-way through its
    # second epoch, after the head stage finished.
    deadline = time.monotonic() + 300
    while (_checkpoint_position(killed) or (0, 0)) < (1, 1):
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(killed, "model.hs")), "killed before the bundle was written"

    changed = [a if a != "4" else "5" for a in FIT_ARGS]  # other epochs: another run's plan
    with pytest.raises(hs.HeadstartError, match="written for a different run"):
        _cli("fit", data, *changed, "--resume", killed)
    _cli("fit", data, *FIT_ARGS, "--resume", killed)
    reference = str(tmp_path / "reference")
    _cli("fit", data, *FIT_ARGS, "--out", reference)

    resumed_config, resumed_state = read_bundle(os.path.join(killed, "model.hs"))
    ref_config, ref_state = read_bundle(os.path.join(reference, "model.hs"))
    assert resumed_state.keys() == ref_state.keys()
    for name, value in ref_state.items():
        torch.testing.assert_close(resumed_state[name], value, rtol=1e-4, atol=1e-5, msg=name)
    with open(os.path.join(killed, "metrics.jsonl")) as f:
        epochs = [(r["stage"], r["epoch"]) for r in map(json.loads, f) if "epoch" in r]  # (and a final record)
    with open(os.path.join(reference, "metrics.jsonl")) as f:
        assert epochs == [(r["stage"], r["epoch"]) for r in map(json.loads, f) if "epoch" in r], "each epoch once"
    assert resumed_config["metrics"]["validation"]["accuracy"] == pytest.approx(
        ref_config["metrics"]["validation"]["accuracy"])
    assert not os.path.exists(os.path.join(killed, FOLDER)), "the checkpoint is dropped once the bundle exists"
    clf = hs.load(os.path.join(killed, "model.hs"))  # the bundle is complete and predicts
    assert set(clf.predict(data)) <= set(COLOURS)


def test_resume_refuses_a_checkpoint_from_another_run(data, tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(hs.HeadstartError, match="no checkpoint to resume from"):
        _cli("fit", data, *FIT_ARGS, "--resume", out)
    args = ["--backbone", TINY, "--scratch", "--image-size", str(TINY_SIZE), "--strategy", "features",
            "--head-epochs", "2", "--quiet"]
    os.makedirs(os.path.join(out, FOLDER))
    with open(os.path.join(out, FOLDER, FILE), "wb") as f:
        f.write(b"\x00" * 64)  # a checkpoint cut short
    with pytest.raises(hs.HeadstartError, match="damaged checkpoint"):
        _cli("fit", data, *args, "--resume", out)


class _Crash(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def _fit_until_crash(data, valid, out: str, monkeypatch) -> None:
    """Fit with checkpoints, 'killed' once the fine-tuning stage has checkpointed its first epoch."""
    real_save = Checkpointer.save

    def save_then_crash(self, state):
        real_save(self, state)
        if (state.stage, state.epoch) >= (1, 1):
            raise _Crash

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save_then_crash)
        with pytest.raises(_Crash):
            hs.ImageClassifier(**FIT_PARAMS, out_dir=out).fit(data, valid=valid)
    assert _checkpoint_position(out) == (1, 1) and not os.path.exists(os.path.join(out, "model.hs"))


FIT_PARAMS = dict(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="two-stage", head_epochs=4,
                  epochs=4, verbose=False)


def _table(path: str, rows: list[tuple[str, str]]) -> str:
    with open(path, "w") as f:
        f.write("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    return path


def test_resume_refuses_other_data_of_the_same_size(data, tmp_path, monkeypatch):
    """Row counts are not enough: other images, or the same images with other labels, are refused; the same
    content under other paths resumes. Validation rows are given, so a label change cannot move the split."""
    out = str(tmp_path / "run")
    names = {c: sorted(os.listdir(os.path.join(data, c))) for c in sorted(COLOURS)}
    rows = [(os.path.join(data, c, name), c) for c in names for name in names[c][:7]]
    valid = _table(str(tmp_path / "valid.csv"), [(os.path.join(data, c, n), c) for c in names for n in names[c][7:]])
    _fit_until_crash(_table(str(tmp_path / "train.csv"), rows), valid, out, monkeypatch)

    other_images = make_class_images(str(tmp_path / "other"), COLOURS, per_class=7, seed=1)
    swapped = [*rows]
    swapped[0], swapped[-1] = (rows[0][0], rows[-1][1]), (rows[-1][0], rows[0][1])  # two labels exchanged
    for other in (other_images, _table(str(tmp_path / "relabelled.csv"), swapped)):
        with pytest.raises(hs.HeadstartError, match=r"written for different training data \(other inputs or labels"
                           ) as err:
            hs.ImageClassifier(**FIT_PARAMS).fit(other, valid=valid, resume=out)
        assert str(err.value).startswith(os.path.join(out, FOLDER, FILE)) and "\n" not in str(err.value)
        assert _checkpoint_position(out) == (1, 1), "a refused resume leaves the checkpoint as it was"

    copied = tmp_path / "copied"  # the same files under other paths, read as a folder per class
    for path, label in rows:
        os.makedirs(copied / label, exist_ok=True)
        shutil.copy(path, copied / label)
    saved: list[tuple[int, int]] = []
    real_save = Checkpointer.save
    monkeypatch.setattr(Checkpointer, "save", lambda self, state: (saved.append((state.stage, state.epoch)),
                                                                   real_save(self, state)))
    resumed = hs.ImageClassifier(**FIT_PARAMS).fit(str(copied), valid=valid, resume=out)
    assert saved and saved[0] == (1, 2), f"continued after the checkpointed epoch, not from the start: {saved}"
    assert [(r["stage"], r["epoch"]) for r in resumed.history_][:2] == [("head", 1), ("finetune", 1)]
    assert not os.path.exists(os.path.join(out, FOLDER)), "resumed to the end"


def test_resume_is_refused_for_a_scikit_learn_head(data, tmp_path):
    """A scikit-learn head is one solve: `resume` names that instead of being ignored in silence."""
    clf = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, head="svm", verbose=False)
    with pytest.raises(hs.HeadstartError, match="fitted in one solve and has nothing to resume"):
        clf.fit(data, resume=str(tmp_path / "run"))
