"""svm, random-forest, knn and mlp heads travel fitted in the bundle (skops, types allowlisted), never as their
training matrix; bundles of the old refit format still load, and re-save in the new one."""

from __future__ import annotations

import copy
import io
import os
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import sklearn
import skops.io
import torch
from conftest import COLOURS, TINY, TINY_SIZE, make_class_images
from sklearn.linear_model import LogisticRegression

import headstart as hs
from headstart.bundle import read_bundle, write_bundle
from headstart.errors import BundleError
from headstart.inference import embed
from headstart.methods.classical import (
    CHECK_ROWS,
    PREFIX,
    SKOPS_ALLOWED,
    _json_params,
    fit_classical,
    from_tensors,
    predict_proba_full,
    to_tensors,
)

FITTED = sorted(SKOPS_ALLOWED)  # svm, random-forest, knn, mlp


class Sneaky(OrderedDict):
    """A type no head holds: a crafted skops file carrying it must be refused by name."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return make_class_images(str(tmp_path_factory.mktemp("skops") / "train"), COLOURS, per_class=10)


@pytest.fixture(scope="module")
def items(folder) -> tuple[list[str], np.ndarray]:
    names = sorted(COLOURS)
    paths = [os.path.join(folder, c, f) for c in names for f in sorted(os.listdir(os.path.join(folder, c)))]
    return paths, np.array([names.index(os.path.basename(os.path.dirname(p))) for p in paths])


@pytest.fixture(scope="module")
def fitted(folder, tmp_path_factory) -> dict[str, tuple[object, str]]:
    """Each head fitted through the estimator on the tiny random backbone, and its bundle."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for head in FITTED:
        torch.manual_seed(0)
        clf = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, head=head,
                                 strategy="features", verbose=False).fit(folder)
        out[head] = clf, clf.save(str(root / f"{head}.hs"))
    return out


def rewritten(path: str, out: str, head: dict | None = None, **tensors: torch.Tensor) -> str:
    """A copy of the bundle at `path` with its head config and classical.* tensors replaced where given."""
    config, state = read_bundle(path)
    if tensors:
        state = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
        state.update({PREFIX + k: v for k, v in tensors.items()})
    return write_bundle(out, {**config, "head": head or config["head"]}, state)


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def refit_format(name: str, X: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[object, dict, dict]:
    """A head as bundles stored it before the skops format (written out here as that code wrote it): the fitted
    head, its config and tensors (the training set, labels and the first rows' probabilities)."""
    est = fit_classical(name, X, y, seed)
    config = {"kind": "classical", "name": name, "seed": seed, "params": _json_params(est), "storage": "refit",
              "classes": [int(c) for c in est.classes_], "sklearn_version": sklearn.__version__}
    return est, config, {"features": torch.from_numpy(X.copy()), "labels": torch.from_numpy(y.astype(np.int64)),
                         "check_proba": torch.from_numpy(est.predict_proba(X[:CHECK_ROWS]).astype(np.float64))}


@pytest.mark.parametrize("head", FITTED)
def test_a_fitted_head_round_trips_through_its_bundle_without_its_training_matrix(head, fitted, items):
    clf, path = fitted[head]
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["config.json", "model.safetensors"]
    config, state = read_bundle(path)
    assert [k for k in state if k.startswith(PREFIX)] == [f"{PREFIX}skops"]  # no classical.features / labels
    assert state[f"{PREFIX}skops"].dtype == torch.uint8
    assert config["head"]["storage"] == "skops" and config["head"]["sklearn_version"] == sklearn.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same scikit-learn: no version warning, nothing refit
        reloaded = hs.load(path)
    assert type(reloaded.classical_[-1]) is type(clf.classical_[-1])
    assert np.array_equal(reloaded.predict_proba(items[0]), clf.predict_proba(items[0]))


def test_a_skops_file_holding_a_type_outside_the_allowlist_is_refused_by_name(fitted, tmp_path, monkeypatch):
    clf, path = fitted["knn"]
    crafted_head = copy.deepcopy(clf.classical_)
    crafted_head[-1].note_ = Sneaky(a=1)
    data = skops.io.dumps(crafted_head)
    assert f"{__name__}.Sneaky" in skops.io.get_untrusted_types(data=data)
    crafted = rewritten(path, str(tmp_path / "crafted.hs"), skops=as_tensor(data))
    rebuilt = []
    monkeypatch.setattr(skops.io, "loads", lambda *a, **k: rebuilt.append(a))
    with pytest.raises(BundleError) as err:
        hs.load(crafted)
    message = str(err.value)
    assert message.startswith(f"{crafted}: classical head 'knn' holds types headstart does not load: ")
    assert f"{__name__}.Sneaky" in message and "KDTree" not in message and "\n" not in message
    assert rebuilt == [], "refused before skops rebuilt anything"


def test_a_type_allowed_for_another_head_or_another_estimator_is_refused(fitted, tmp_path):
    _, path = fitted["knn"]
    forest = skops.io.dumps(fitted["random-forest"][0].classical_)  # trees: allowed for a forest, not for knn
    with pytest.raises(BundleError, match=r"'knn' holds types headstart does not load: .*sklearn\.tree\._tree\.Tree;"):
        hs.load(rewritten(path, str(tmp_path / "forest.hs"), skops=as_tensor(forest)))
    X = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    logistic = skops.io.dumps(fit_classical("logistic", X, np.arange(12) % 2))  # only types skops trusts itself
    with pytest.raises(BundleError, match=r"'knn' holds types headstart does not load: .*LogisticRegression"):
        hs.load(rewritten(path, str(tmp_path / "logistic.hs"), skops=as_tensor(logistic)))


def test_a_public_estimator_nested_where_the_head_holds_none_is_refused(fitted, tmp_path, monkeypatch):
    # skops trusts every public scikit-learn estimator; the head's own Pipeline steps were the only check, so an
    # estimator tucked inside the svm's calibrator would have been rebuilt and carried along
    clf, path = fitted["svm"]
    crafted_head = copy.deepcopy(clf.classical_)
    crafted_head[-1].calibrated_classifiers_[0].extra_ = LogisticRegression()
    data = skops.io.dumps(crafted_head)
    assert not set(skops.io.get_untrusted_types(data=data)) - SKOPS_ALLOWED["svm"]  # skops alone would load it
    rebuilt = []
    monkeypatch.setattr(skops.io, "loads", lambda *a, **k: rebuilt.append(a))
    with pytest.raises(BundleError, match=r"'svm' holds types headstart does not load: sklearn\.linear_model\._logistic"
                                          r"\.LogisticRegression;"):
        hs.load(rewritten(path, str(tmp_path / "nested.hs"), skops=as_tensor(data)))
    assert rebuilt == []


def test_a_zip_bomb_in_the_skops_file_is_refused_before_it_inflates(fitted, tmp_path, monkeypatch):
    _, path = fitted["mlp"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("schema.json", bytes(8 << 20))  # 8 MiB of zeros deflate to ~8 KB
    monkeypatch.setattr(skops.io, "get_untrusted_types", lambda **k: pytest.fail("the skops file was opened"))
    with pytest.raises(BundleError, match=r"classical\.skops: schema\.json is compressed .*zip bomb"):
        hs.load(rewritten(path, str(tmp_path / "bomb.hs"), skops=as_tensor(buffer.getvalue())))


def test_another_scikit_learn_version_loads_with_one_warning(fitted, tmp_path, items):
    clf, path = fitted["svm"]
    old = rewritten(path, str(tmp_path / "old-sklearn.hs"), head={**clf._classical_saved[0], "sklearn_version": "1.0"})
    with pytest.warns(RuntimeWarning) as caught:
        reloaded = hs.load(old)
    assert [str(w.message) for w in caught] == [f"the svm head was saved with scikit-learn 1.0 and loads under "
                                                f"{sklearn.__version__}: its predictions may differ"]
    assert np.array_equal(reloaded.predict_proba(items[0]), clf.predict_proba(items[0]))


def test_an_old_refit_bundle_still_loads_and_resaves_fitted(fitted, items, tmp_path):
    clf, path = fitted["random-forest"]
    paths, y = items
    feats, ok = embed(clf.model_.backbone, paths, use_cache=False)
    assert ok.all()
    est, head, tensors = refit_format("random-forest", feats, y, seed=clf.seed)
    old = rewritten(path, str(tmp_path / "old.hs"), head=head, **tensors)
    assert {f"{PREFIX}features", f"{PREFIX}labels"} <= set(read_bundle(old)[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the refit matches the saved probabilities
        reloaded = hs.load(old)
    expected = predict_proba_full(est, feats, len(clf.classes_))
    assert np.array_equal(reloaded.predict_proba(paths), expected)
    config, state = read_bundle(reloaded.save(str(tmp_path / "resaved.hs")))
    assert config["head"]["storage"] == "skops" and [k for k in state if k.startswith(PREFIX)] == [f"{PREFIX}skops"]
    assert np.array_equal(hs.load(str(tmp_path / "resaved.hs")).predict_proba(paths), expected)


def test_the_old_refit_format_warns_when_the_refit_differs():
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    y = np.arange(30) % 3
    X[:, 0] += y
    _, config, tensors = refit_format("random-forest", X, y)
    tensors = {PREFIX + k: v for k, v in tensors.items()}
    fresh = to_tensors("random-forest", X, y)[0]
    assert fresh["storage"] == "skops"
    tensors[f"{PREFIX}check_proba"] = tensors[f"{PREFIX}check_proba"] * 0.5
    with pytest.warns(RuntimeWarning, match="differs from the saved one"):
        from_tensors(config, tensors)
    with pytest.raises(BundleError, match="cannot be rebuilt"):
        from_tensors(config, {k: v for k, v in tensors.items() if not k.endswith("labels")})


def test_an_old_refit_bundle_too_large_to_refit_is_refused_before_fitting(monkeypatch):
    """A crafted old-format SVM with a huge training set would stall `load` on a quadratic fit: refused unfitted."""
    import headstart.methods.classical as classical
    X = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
    y = np.arange(40) % 2
    _, config, tensors = refit_format("svm", X, y)
    tensors = {PREFIX + k: v for k, v in tensors.items()}
    monkeypatch.setattr(classical, "REFIT_MAX_ROWS", 39)
    monkeypatch.setattr(classical, "_fit", lambda *a: pytest.fail("refit a head it should have refused"))
    with pytest.raises(BundleError, match="would refit on 40 rows"):
        from_tensors(config, tensors)
