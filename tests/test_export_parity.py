"""The export parity check: ordinary heads of every kind export (the same decisions, scores within what float32
rounding through the model explains), and graphs that compute something else are refused."""

import os

import numpy as np
import onnx
import pytest
import torch
from conftest import COLOURS, TINY, TINY_SIZE, make_class_images
from onnx import numpy_helper
from typer.testing import CliRunner

import headstart as hs
from headstart import probe
from headstart.cli import app
from headstart.deploy import export, onnx_runtime
from headstart.deploy.export import SCORE_CAP, SCORE_FLOOR, export_model, parity_failure, parity_tolerance
from headstart.deploy.predict_inputs import iter_inputs
from headstart.errors import HeadstartError
from headstart.heads import HeadConfig, build_head

TINY_ARGS = dict(backbone=TINY, pretrained=False, image_size=TINY_SIZE, verbose=False, use_cache=False)


def test_parity_failure_judges_decisions_and_scores():
    want = np.array([[0.5, 0.3, 0.2], [0.40004, 0.39996, 0.2]])
    assert parity_failure(want, want + 1e-5, 1e-4, "classification") is None
    tie = want.copy()
    tie[1, :2] = [0.39996, 0.40004]  # the model's top two are 8e-5 apart: a tie, either class is its answer
    assert parity_failure(want, tie, 1e-4, "classification") is None
    # every score within a tolerance of 0.07, yet the top class changes where the model's top two were 0.1 apart
    close = np.array([[0.45, 0.35, 0.2]])
    flipped = np.array([[0.39, 0.41, 0.2]])
    assert "predicts class 1 where the model predicts 0" in parity_failure(close, flipped, 0.07, "classification")
    moved = want.copy()
    moved[0, 2] += 2e-4  # the same decisions, a score off by twice the tolerance
    assert "up to 2.00e-04" in parity_failure(want, moved, 1e-4, "classification")
    assert parity_failure(want, np.full_like(want, np.nan), 1e-4, "classification") is not None
    regression = np.array([[0.3], [-1.2]])
    assert parity_failure(regression, regression + 5e-5, 1e-4, "regression") is None
    assert parity_failure(regression, regression + 5e-4, 1e-4, "regression") is not None
    labels = np.array([[0.50002, 0.7], [0.9, 0.1]])
    near = labels.copy()
    near[0, 0] = 0.49998  # within the tolerance of the threshold: either decision is the model's
    assert parity_failure(labels, near, 1e-4, "multilabel", [0.5, 0.3]) is None
    off = labels.copy()
    off[1, 1] = 0.4  # crosses its threshold of 0.3 from well below
    assert "switches labels" in parity_failure(labels, off, 1e-4, "multilabel", [0.5, 0.3])


def test_parity_tolerance_follows_the_heads_sensitivity():
    torch.manual_seed(0)
    features = torch.rand(16, 32)
    head = build_head(HeadConfig(), 32, 4)
    loud = build_head(HeadConfig(), 32, 4)
    loud.load_state_dict(head.state_dict())
    with torch.no_grad():
        loud[2].weight.mul_(10)
    quiet = parity_tolerance(head, features, "regression")
    # logits are linear in the features: ten times the weights, ten times the rounding they pass on
    assert parity_tolerance(loud, features, "regression") == pytest.approx(10 * quiet, rel=1e-6)
    assert parity_tolerance(head, features, "regression") == quiet  # seeded: the same model, the same tolerance
    with torch.no_grad():
        loud[2].weight.mul_(1e5)
    assert parity_tolerance(loud, features, "classification") == SCORE_FLOOR  # saturated: probabilities 0 or 1
    assert parity_tolerance(head, features, "classification", rtol=10.0) == SCORE_CAP


def test_features_heads_from_strong_to_weak_regularisation_export(tmp_path, monkeypatch):
    # At C=1000 these separable colours give probabilities of 0 and 1: the tolerance is the floor, and holds.
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=8)
    images = list(iter_inputs("image", [data]))
    for c_value in (0.003, 1000.0):
        monkeypatch.setattr(probe, "C_GRID", (c_value,))  # the probe's cross-validation has only this C to choose
        clf = hs.ImageClassifier(strategy="features", **TINY_ARGS).fit(data)
        assert clf.metrics_["refit"]["C"] == c_value
        result = export_model(clf, str(tmp_path / f"c{c_value}.onnx"), "onnx", check_inputs=[data], verbose=False)
        assert os.path.isfile(result["path"]) and result["max_abs_diff"] <= result["tolerance"]
        on_torch = clf.predict(images)
        clf.runtime_ = onnx_runtime.OnnxScorer(result["path"])  # as hs.load(..., runtime="onnx") attaches it
        assert clf.predict(images) == on_torch


def test_two_stage_mlp_and_multilabel_heads_export(tmp_path):
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=8)
    mlp = hs.ImageClassifier(strategy="features", head="torch-mlp", head_epochs=5, **TINY_ARGS).fit(data)
    result = export_model(mlp, str(tmp_path / "mlp.onnx"), "onnx", check_inputs=[data], verbose=False)
    assert result["max_abs_diff"] <= result["tolerance"]  # the rounding model runs through GELU and two layers

    two = hs.ImageClassifier(strategy="two-stage", epochs=1, batch_size=8, **TINY_ARGS).fit(data)
    assert any(r["stage"] != "head" for r in two.history_)  # the backbone stage ran
    result = export_model(two, str(tmp_path / "two.onnx"), "onnx", check_inputs=[data], verbose=False)
    assert result["max_abs_diff"] <= result["tolerance"]

    tags = {"red": "warm", "green": "cool;natural", "blue": "cool"}
    rows = [f"train/{c}/{c}_{i}.png,{tags[c]}" for c in COLOURS for i in range(8)]
    (tmp_path / "ml.csv").write_text("path,label\n" + "\n".join(rows))
    ml = hs.ImageClassifier(task="multilabel", strategy="features", **TINY_ARGS).fit(str(tmp_path / "ml.csv"))
    result = export_model(ml, str(tmp_path / "ml.onnx"), "onnx", check_inputs=[data], verbose=False)
    assert result["max_abs_diff"] <= result["tolerance"]


def test_regressor_exports_within_its_tolerance_in_target_units(tmp_path):
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=8)
    values = {"red": 10.0, "green": 20.0, "blue": 30.0}
    rows = [f"train/{c}/{c}_{i}.png,{values[c] + i}" for c in COLOURS for i in range(8)]
    (tmp_path / "reg.csv").write_text("path,label\n" + "\n".join(rows))
    reg = hs.ImageRegressor(strategy="features", **TINY_ARGS).fit(str(tmp_path / "reg.csv"))
    bundle = reg.save(str(tmp_path / "reg.hs"))
    result = export_model(reg, str(tmp_path / "reg.onnx"), "onnx", check_inputs=[data], verbose=False,
                          bundle=bundle)
    images = list(iter_inputs("image", [data]))
    on_onnx = hs.load(bundle, runtime="onnx")
    on_onnx.verbose = False
    assert on_onnx.runtime_.path == result["path"]
    # the graph's value is standardised: its tolerance, in the user's units, is that many target deviations
    spread = result["tolerance"] * reg.target_scaling_["std"]
    assert np.abs(np.array(on_onnx.predict(images)) - np.array(reg.predict(images))).max() <= spread


def _perturb_after_export(monkeypatch, name: str, change) -> list[str]:
    """Every ONNX export from here on gets `change` applied to its initializer `name` (the list returned names
    what was changed, so a test knows the graph it checks really was broken)."""
    annotate, changed = export._annotate, []

    def broken(path, est, digest):
        annotate(path, est, digest)
        model = onnx.load(path)
        for init in model.graph.initializer:
            if init.name == name:
                init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init).copy()), name))
                changed.append(name)
        onnx.save(model, path)

    monkeypatch.setattr(export, "_annotate", broken)
    return changed


def _one_percent_noise(weight: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(0).standard_normal(weight.shape)
    return (weight * (1 + 0.01 * noise)).astype(weight.dtype)


@pytest.mark.parametrize("name, change", [
    ("model.head.2.weight", _one_percent_noise),  # a head weight off by 1% (rounding is 1e-7)
    ("mean", lambda mean: (mean + 0.015).astype(mean.dtype)),  # TF's 0.5 for ImageNet's 0.485: a wrong normalisation
], ids=["perturbed head weight", "wrong normalisation"])
def test_a_broken_graph_is_refused_and_not_written(tmp_path, monkeypatch, name, change):
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=8)
    # A strong penalty keeps the probabilities off 0 and 1, so the tolerance is the rounding model's, not the floor
    monkeypatch.setattr(probe, "C_GRID", (0.003,))
    clf = hs.ImageClassifier(strategy="features", **TINY_ARGS).fit(data)
    intact = export_model(clf, str(tmp_path / "intact.onnx"), "onnx", check_inputs=[data], verbose=False)
    assert intact["tolerance"] > SCORE_FLOOR
    changed = _perturb_after_export(monkeypatch, name, change)
    with pytest.raises(HeadstartError, match="not the model: .*not written"):
        export_model(clf, str(tmp_path / "broken.onnx"), "onnx", check_inputs=[data], verbose=False)
    assert changed == [name] and not os.path.exists(tmp_path / "broken.onnx")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".export-")]  # no temporary file left behind


@pytest.mark.slow
def test_lite0_features_on_greyscale_fashion_exports_at_any_c(tmp_path, monkeypatch):
    """The reported case, small: a `features` head on the packaged Lite0 at 64 px, grey-scale Fashion-MNIST,
    exported with the default parity inputs, at the strongest and the weakest penalty the probe can choose."""
    from headstart.data import fashion_mnist

    train = fashion_mnist.export_subset(str(tmp_path / "train"), "train", 4, seed=0)
    for c_value in (probe.C_GRID[0], 100.0):
        monkeypatch.setattr(probe, "C_GRID", (c_value,))
        clf = hs.ImageClassifier("efficientnet_lite0", strategy="features", image_size=64, verbose=False).fit(train)
        assert clf.metrics_["refit"]["C"] == c_value
        bundle = clf.save(str(tmp_path / f"c{c_value}.hs"))
        result = CliRunner().invoke(app, ["export", bundle, "--format", "onnx"])
        assert result.exit_code == 0, result.output
        assert "the same decisions" in result.output and os.path.isfile(str(tmp_path / f"c{c_value}.onnx"))
