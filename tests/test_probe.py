"""The head stage's linear probe: scikit-learn's logistic regression objective, solved in torch, C by CV."""

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE
from sklearn.linear_model import LogisticRegression

import headstart as hs
from headstart.heads import HeadConfig, build_head
from headstart.probe import C_GRID, _solve, fit_probe, is_probe_head


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
