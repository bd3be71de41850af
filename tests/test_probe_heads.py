"""Regression and multi-label heads solved on frozen features: ridge (alpha by leave-one-out) and one-vs-rest
logistic regression (C by cross-validation, per-label thresholds), checked against scikit-learn and end to end."""

import json
import os
import zipfile

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import r2_score
from torch.utils.data import DataLoader, TensorDataset

import headstart as hs
from headstart.heads import HeadConfig, build_head
from headstart.probe import C_GRID, is_probe_head
from headstart.probe_heads import ALPHA_GRID, _solve_ovr_folds, fit_ovr, fit_ridge
from headstart.strategies import Stage
from headstart.thresholds import choose_thresholds
from headstart.train import LoopConfig, run_stage


def _linear_target(n: int, d: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of uneven scales and a standardised target linear in them (signal variance 1) plus noise."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.1, 5.0, d)
    x = rng.normal(size=(n, d)) * scale
    y = (x / scale) @ rng.normal(size=d) / np.sqrt(d) + noise * rng.normal(size=n)
    y = (y - y.mean()) / y.std()
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32).reshape(-1, 1)


@pytest.mark.parametrize("n,d", [(300, 20), (60, 200), (120, 120)])  # rows > features, features > rows, equal
def test_ridge_head_matches_scikit_learn_ridgecv(n, d):
    x, y = _linear_target(n, d, noise=1.0)
    head = build_head(HeadConfig(), d, 1)
    chosen = fit_ridge(head, x, y)
    z = head[0](x).double().numpy()  # the head's own features, at the scaling it chose: what RidgeCV is given too
    reference = RidgeCV(alphas=ALPHA_GRID).fit(z, y.numpy()[:, 0])
    assert chosen["alpha"] == reference.alpha_
    assert chosen["cv_mse"] == pytest.approx(-reference.best_score_, rel=1e-3)
    with torch.no_grad():
        ours = head.eval()(x)[:, 0].numpy()
    assert np.abs(ours - reference.predict(z)).max() < 1e-4
    assert len(chosen["cv_candidates"]) == len(ALPHA_GRID)


def test_ridge_head_is_not_worse_than_a_gradient_trained_head_on_a_noisy_target():
    # R^2 at most 0.5; 120 training rows of 150 features: a head trained by AdamW for head_epochs overfits (test
    # R^2 -0.26 to 0.005 over seeds 0-3) where ridge at its leave-one-out alpha keeps 0.06-0.15
    x, y = _linear_target(400, 150, noise=1.0)
    train, val, test = slice(0, 120), slice(120, 160), slice(160, 400)
    torch.manual_seed(0)  # before the heads are built: their initial weights must not depend on earlier tests
    ridge = build_head(HeadConfig(), 150, 1)
    fit_ridge(ridge, x[train], y[train])
    trained = build_head(HeadConfig(), 150, 1)
    trained[0].set_statistics(x[train])
    loaders = [DataLoader(TensorDataset(torch.arange(len(y[s])), x[s], y[s]), batch_size=32, shuffle=i == 0)
               for i, s in enumerate((train, val))]
    run_stage(trained, Stage("head", 60, {"head": 1e-3}), *loaders, torch.nn.MSELoss(), "regression",
              LoopConfig(verbose=False))
    with torch.no_grad():
        r2 = {name: r2_score(y[test].numpy(), head.eval()(x[test]).numpy()) for name, head in
              (("ridge", ridge), ("gradient", trained))}
    assert r2["ridge"] > max(r2["gradient"], 0.0), r2


def test_ovr_solver_matches_scikit_learn_per_label():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(200, 6)))
    y = torch.as_tensor((x.numpy() @ rng.normal(size=(6, 3)) + rng.normal(size=(200, 3)) > 0).astype(np.float64))
    weight, bias = _solve_ovr_folds(x, y, torch.ones(1, 200, dtype=torch.bool), 0.3, max_iter=500)
    for label in range(3):
        ref = LogisticRegression(C=0.3, max_iter=5000, tol=1e-10).fit(x.numpy(), y[:, label].numpy())
        ours = torch.sigmoid(x @ weight[0, label] + bias[0, label]).numpy()
        assert np.abs(ours - ref.predict_proba(x.numpy())[:, 1]).max() < 2e-3


def test_ovr_head_records_c_and_predicts_the_labels():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(150, 10)), dtype=torch.float32)
    y = (x[:, :3] > 0).float()  # label j is feature j's sign
    head = build_head(HeadConfig(), 10, 3)
    chosen = fit_ovr(head, x, y)
    assert len(chosen["C"]) == 3 and set(chosen["C"]) <= set(C_GRID)
    assert chosen["scaling"] in ("standardized", "as given")
    with torch.no_grad():
        assert float(((head.eval()(x) > 0).float() == y).float().mean()) > 0.95


def test_each_label_gets_its_own_c():
    """A label the features predict wants a weak penalty; a label they do not, the strongest (predict its base
    rate) or nearly: one shared C over-regularises the first or over-fits the second."""
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.normal(size=(120, 30)), dtype=torch.float32)
    signal = (x[:, 0] + 0.3 * x[:, 1] > 0).float()
    noise = torch.as_tensor(rng.random(120) < 0.5, dtype=torch.float32)
    chosen = fit_ovr(build_head(HeadConfig(), 30, 2), x, torch.stack([signal, noise], 1))
    assert chosen["C"][0] >= 10 * chosen["C"][1]


def test_thresholds_are_kept_only_where_they_raise_micro_f1():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0], [0, 1]])
    calibrated = np.where(y == 1, 0.8, 0.2)
    assert choose_thresholds(y, calibrated)["thresholds"] is None  # 0.5 is already perfect
    shy = calibrated.copy()
    shy[:, 0] = np.where(y[:, 0] == 1, 0.3, 0.1)  # label 0's positives all score below 0.5
    choice = choose_thresholds(y, shy)
    assert choice["thresholds"][1] == 0.5 and 0.1 < choice["thresholds"][0] <= 0.3
    assert choice["micro_f1_thresholds"] == 1.0 > choice["micro_f1_at_0.5"]
    assert choose_thresholds(np.zeros((0, 2)), np.zeros((0, 2)))["thresholds"] is None


def _colour_csvs(colour_folder, tmp_path) -> tuple[str, str]:
    """A value and tags per colour image (train/<colour>/..., 12 each): path,label tables."""
    rows = [(f"train/{c}/{c}_{i}.png", v + 0.1 * (i % 3), tags) for c, v, tags in
            [("red", 1.0, "warm"), ("green", 2.0, "cool;natural"), ("blue", 3.0, "cool")] for i in range(12)]
    reg_csv, ml_csv = tmp_path / "reg.csv", tmp_path / "ml.csv"
    reg_csv.write_text("path,label\n" + "\n".join(f"{p},{v}" for p, v, _ in rows))
    ml_csv.write_text("path,label\n" + "\n".join(f"{p},{t}" for p, _, t in rows))
    return str(reg_csv), str(ml_csv)


def test_image_regressor_features_solves_ridge_and_round_trips(colour_folder, tmp_path):
    reg_csv, _ = _colour_csvs(colour_folder, tmp_path)
    reg = hs.ImageRegressor(TINY, strategy="features", pretrained=False, image_size=TINY_SIZE, verbose=False,
                            use_cache=False).fit(reg_csv)
    assert is_probe_head(reg.model_.head)
    (record,) = [r for r in reg.history_ if r["stage"] == "head"]
    assert record["probe"]["alpha"] in ALPHA_GRID and record["solver"].startswith("ridge")
    assert reg.metrics_["refit"]["alpha"] == record["probe"]["alpha"]  # refitted on training + validation rows
    assert reg.evaluate(reg_csv)["r2"] > 0.5
    reloaded = hs.load(reg.save(str(tmp_path / "reg.hs")))
    images = os.path.join(colour_folder, "blue")
    assert reloaded.predict(images) == reg.predict(images)


def test_multilabel_features_records_c_and_thresholds_that_predict_and_the_bundle_use(colour_folder, tmp_path):
    _, ml_csv = _colour_csvs(colour_folder, tmp_path)
    ml = hs.ImageClassifier(TINY, task="multilabel", strategy="features", pretrained=False, image_size=TINY_SIZE,
                            verbose=False, use_cache=False).fit(ml_csv)
    (record,) = [r for r in ml.history_ if r["stage"] == "head"]
    assert set(record["probe"]["C"]) <= set(C_GRID) and "micro_f1_at_0.5" in record["probe"]
    # refitted on every labeled row, the thresholds are chosen on all of them out of fold, not on validation alone
    assert set(ml.metrics_["thresholds"]) == {"thresholds", "micro_f1_at_0.5", "micro_f1_thresholds", "rows_from"}
    assert ml.metrics_["thresholds"]["rows_from"] == f"out of fold on {ml.metrics_['refit']['rows']} labeled rows"
    assert ml.evaluate(ml_csv)["micro_f1"] > 0.8
    image = os.path.join(colour_folder, "red", "red_0.png")
    ml.thresholds_ = [0.0, 1.01, 0.5]  # every image is "cool", none "natural"
    assert ml.predict([image])[0][:1] == ["cool"] and "natural" not in ml.predict([image])[0]
    path = ml.save(str(tmp_path / "ml.hs"))
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("config.json"))["thresholds"] == [0.0, 1.01, 0.5]
    reloaded = hs.load(path)
    assert reloaded.thresholds_ == [0.0, 1.01, 0.5] and reloaded.predict([image]) == ml.predict([image])
    assert reloaded.evaluate(ml_csv) == ml.evaluate(ml_csv)


def test_two_stage_regression_fine_tunes_from_the_solved_head(colour_folder, tmp_path):
    reg_csv, _ = _colour_csvs(colour_folder, tmp_path)
    reg = hs.ImageRegressor(TINY, strategy="two-stage", epochs=1, batch_size=8, pretrained=False,
                            image_size=TINY_SIZE, verbose=False).fit(reg_csv)
    head, *later = reg.history_
    assert head["stage"] == "head" and head["probe"]["alpha"] in ALPHA_GRID and later  # solved, then fine-tuned
    assert ("refit" in reg.metrics_) == (not reg.backbone_trained_)
    reloaded = hs.load(reg.save(str(tmp_path / "reg.hs")))
    images = os.path.join(colour_folder, "red")
    assert np.allclose(reloaded.predict(images), reg.predict(images), atol=1e-5)


def test_out_of_fold_ridge_predictions_are_scikit_learns_ridge_on_each_fold():
    from sklearn.linear_model import Ridge

    from headstart.probe_heads import _ovr_folds, cross_validated_predictions

    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.normal(size=(60, 8)), dtype=torch.float32)
    y = x[:, :1] * 2 + torch.as_tensor(rng.normal(size=(60, 1)), dtype=torch.float32)
    preds = cross_validated_predictions("regression", x, y, {"scaling": "as given", "alpha": 3.0}, seed=5)
    masks, held = _ovr_folds(60, 5)
    for fit, rows in zip(masks, held):
        ref = Ridge(alpha=3.0).fit(x[fit].numpy(), y[fit].numpy()).predict(x[rows].numpy())
        np.testing.assert_allclose(preds[rows].ravel(), ref.ravel(), atol=1e-4)
