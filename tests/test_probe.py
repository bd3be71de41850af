"""The head stage's linear probe: scikit-learn's logistic regression objective, solved in torch, C by CV."""

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE
from sklearn.linear_model import LogisticRegression

import headstart as hs
from headstart.heads import HeadConfig, build_head
from headstart.probe import C_GRID, _solve, _solve_folds, fit_probe, is_probe_head


def _blobs(n: int, d: int, classes: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    y = rng.integers(0, classes, n)
    x = centres[y] + noise * rng.normal(size=(n, d))
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)


@pytest.mark.parametrize("c_value", [0.01, 1.0])
def test_solver_matches_scikit_learn_at_the_same_c(c_value):
    x, y = _blobs(300, 12, 3, noise=2.0)
    weight, bias = _solve(x.double(), y, 3, c_value)
    ours = torch.softmax(x.double() @ weight.T + bias, -1).numpy()
    theirs = LogisticRegression(C=c_value, max_iter=5000, tol=1e-10).fit(x.numpy(), y.numpy()).predict_proba(x.numpy())
    assert np.abs(ours - theirs).max() < 2e-3


def test_folds_solved_together_match_each_fold_solved_alone():
    x, y = _blobs(90, 20, 3, noise=2.0)
    x = x.double()
    masks = torch.zeros(3, 90, dtype=torch.bool)
    for f in range(3):  # overlapping, unequal fits: each fold must see only its own rows, at its own mean
        masks[f, f * 20:f * 20 + 50 + 10 * f] = True
    weights, biases = _solve_folds(x, y, masks, 3, 0.3)
    together = [torch.softmax(x @ weights[f].T + biases[f], -1) for f in range(3)]
    for f in range(3):
        alone_w, alone_b = _solve(x[masks[f]], y[masks[f]], 3, 0.3)
        assert (together[f] - torch.softmax(x @ alone_w.T + alone_b, -1)).abs().max() < 1e-3
    assert (together[0] - together[2]).abs().max() > 0.05  # different rows, different solutions


def test_cross_validation_regularises_noisy_wide_data_more_than_clean_data():
    head = build_head(HeadConfig(), 200, 3)
    noisy = fit_probe(head, *_blobs(60, 200, 3, noise=8.0), n_classes=3)
    clean = fit_probe(build_head(HeadConfig(), 200, 3), *_blobs(60, 200, 3, noise=0.3), n_classes=3)
    assert noisy["C"] in C_GRID and clean["C"] in C_GRID
    assert noisy["C"] < clean["C"]


def test_fitted_head_predicts_what_the_probe_learned():
    x, y = _blobs(200, 8, 4, noise=0.5)
    head = build_head(HeadConfig(), 8, 4)
    chosen = fit_probe(head, x, y, n_classes=4)
    assert chosen["scaling"] in ("standardized", "as given")
    with torch.no_grad():
        accuracy = float((head.eval()(x).argmax(-1) == y).float().mean())
    assert accuracy > 0.95


def test_features_strategy_records_the_probe_choice(colour_folder):
    clf = hs.ImageClassifier(TINY, strategy="features", pretrained=False, image_size=TINY_SIZE, verbose=False,
                             use_cache=False).fit(colour_folder)
    assert is_probe_head(clf.model_.head)
    (record,) = [r for r in clf.history_ if r["stage"] == "head"]
    assert record["probe"]["C"] in C_GRID and record["val_loss"] > 0
    # the fitted model is the probe: its validation accuracy is the one the stage recorded
    assert clf.metrics_["validation"]["accuracy"] == pytest.approx(record["val_accuracy"], abs=1e-6)


def test_mlp_heads_still_train_by_gradient(colour_folder):
    torch_mlp = hs.ImageClassifier(TINY, strategy="features", head="torch-mlp", pretrained=False,
                                   image_size=TINY_SIZE, head_epochs=2, verbose=False, use_cache=False)
    torch_mlp.fit(colour_folder)
    assert not is_probe_head(torch_mlp.model_.head)
    assert [r["epoch"] for r in torch_mlp.history_ if r["stage"] == "head"] == [1, 2]


def test_a_probe_that_the_fine_tune_did_not_beat_is_refitted_on_every_labeled_row(colour_folder, tmp_path):
    from headstart.inference import embed
    from headstart.probe import _install

    # lr=0: the fine-tune cannot move, so it never beats the probe it started from, and the backbone stays as it was
    clf = hs.ImageClassifier(TINY, strategy="two-stage", lr=0.0, epochs=1, pretrained=False, image_size=TINY_SIZE,
                             verbose=False).fit(colour_folder)
    assert clf.history_[-1]["kept_start"] and not clf.backbone_trained_
    summary = clf.data_summary_
    assert summary["validation"] > 0 and clf.metrics_["refit"]["rows"] == summary["train"] + summary["validation"]
    # the saved head is logistic regression on all rows at the C cross-validation chose on the training rows
    chosen = next(r["probe"] for r in clf.history_ if "probe" in r)
    data = clf._load(colour_folder)
    feats, ok = embed(clf.model_.backbone, data.items, verbose=False)
    expected = build_head(HeadConfig(), feats.shape[1], 3)
    _install(expected, torch.as_tensor(feats[ok]), torch.as_tensor(data.targets[ok]), 3, chosen["scaling"],
             chosen["C"])
    x = torch.as_tensor(feats[ok])
    with torch.no_grad():
        gap = (clf.model_.head(x).softmax(-1) - expected.eval()(x).softmax(-1)).abs().max()
    assert gap < 2e-3, gap  # the same solve up to L-BFGS's tolerance (rows come in another order)
    reloaded = hs.load(clf.save(str(tmp_path / "refit.hs")))
    assert np.allclose(reloaded.predict_proba(data.items[:6]), clf.predict_proba(data.items[:6]), atol=1e-6)


def test_no_refit_when_the_validation_set_is_the_users(colour_folder):
    clf = hs.ImageClassifier(TINY, strategy="features", pretrained=False, image_size=TINY_SIZE, verbose=False,
                             use_cache=False).fit(colour_folder, valid=colour_folder)
    assert "refit" not in clf.metrics_


def _scikit_learn_probe(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """What rank's probe was before it moved onto probe.py's solver: scikit-learn's pipeline, out of fold, on the
    same folds (rank._folds); (every row's predicted label, the folds' mean accuracy as cross_val_score takes it)."""
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from headstart.rank import _folds

    folds = _folds(labels, 3, seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=0.5))
    predicted = cross_val_predict(model, features, labels, cv=folds)
    held = [rows for _, rows in folds.split(np.zeros(len(labels)), labels)]
    return predicted, float(np.mean([np.mean(predicted[rows] == labels[rows]) for rows in held]))


@pytest.mark.slow
def test_the_advisors_probe_is_scikit_learns_on_real_features_and_pixels(fashion):
    """rank.probe_accuracy / probe_rows (what the advisor's thresholds and backbone_choice read) now run on this
    module's solver: on Lite0's features of real Fashion-MNIST photos and on their 16x16 grey pixels (the advisor's
    no-transfer reference), the same out-of-fold predictions as scikit-learn's probe on >= 99% of the rows, and
    accuracies within half a point."""
    from PIL import Image

    from headstart.backbones import create_backbone
    from headstart.inference import embed
    from headstart.modalities import MODALITIES
    from headstart.rank import probe_accuracy, probe_rows

    data = MODALITIES["image"].load(fashion[0], "classification", False, {})
    backbone = create_backbone("efficientnet_lite0", image_size=32)
    features, ok = embed(backbone, data.items, use_cache=False, verbose=False)
    pixels = np.stack([np.asarray(Image.open(p).convert("L").resize((16, 16)), dtype=np.float32).ravel() / 255
                       for p in data.items])
    labels = data.targets
    for inputs in (features[ok], pixels[ok]):
        for seed in (0, 1):
            theirs, their_accuracy = _scikit_learn_probe(inputs, labels[ok], seed)
            rows = probe_rows(inputs, labels[ok], seed=seed)
            assert np.mean((rows == 1) == (theirs == labels[ok])) >= 0.99
            assert abs(probe_accuracy(inputs, labels[ok], seed=seed) - their_accuracy) <= 0.005


def test_the_advisors_probe_is_scikit_learns_on_two_classes():
    """Two classes: scikit-learn fits one weight vector where the solver fits a softmax pair; at C / 2 the pair is
    the same model (probe.fixed_c_predictions), so the predictions are the same."""
    from headstart.rank import probe_rows

    x, y = _blobs(240, 30, 2, noise=4.0, seed=3)
    features, labels = x.numpy(), y.numpy()
    theirs, _ = _scikit_learn_probe(features, labels, 0)
    assert 0.6 < np.mean(theirs == labels) < 0.95  # hard enough that the penalty decides some rows
    assert np.array_equal(probe_rows(features, labels, seed=0), (theirs == labels).astype(float))
