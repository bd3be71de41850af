"""Classical heads on cached features (fit, save without pickle, reload identically) and the Embedder transformer."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from conftest import COLOURS, TINY, TINY_SIZE, make_class_images
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import check_estimator

from headstart.errors import DataError, HeadstartError
from headstart.methods.classical import (
    CLASSICAL_HEADS,
    PREFIX,
    fit_classical,
    from_tensors,
    predict_proba_full,
    to_tensors,
)
from headstart.methods.embedder import EMBEDDER_INAPPLICABLE_CHECKS, Embedder


def tiny_embedder(**kw) -> Embedder:
    return Embedder(backbone=TINY, pretrained=False, image_size=TINY_SIZE, **kw)


def paths_and_labels(root: str) -> tuple[list[str], np.ndarray]:
    names = sorted(COLOURS)
    paths = [os.path.join(root, c, f) for c in names for f in sorted(os.listdir(os.path.join(root, c)))]
    return paths, np.array([names.index(os.path.basename(os.path.dirname(p))) for p in paths])


@pytest.fixture(scope="module")
def colour_sets(tmp_path_factory):
    """Train and held-out paths with labels, and a fitted tiny Embedder (random weights, seeded)."""
    root = tmp_path_factory.mktemp("classical")
    train = paths_and_labels(make_class_images(str(root / "train"), COLOURS, per_class=12, seed=0))
    test = paths_and_labels(make_class_images(str(root / "test"), COLOURS, per_class=6, seed=1))
    torch.manual_seed(0)
    embedder = tiny_embedder(cache_dir=str(root / "cache")).fit(train[0])
    return train, test, embedder


@pytest.fixture(scope="module")
def colour_features(colour_sets):
    (train, y), (test, y_test), embedder = colour_sets
    return embedder.transform(train), y, embedder.transform(test), y_test


def bundle_round_trip(config: dict, tensors: dict) -> tuple[dict, dict]:
    """Through the bundle's formats: JSON and safetensors bytes, beside another model weight."""
    blob = save_safetensors({**tensors, "head.weight": torch.zeros(2, 2)})
    return json.loads(json.dumps(config)), load_safetensors(blob)


@pytest.mark.parametrize("name", sorted(CLASSICAL_HEADS))
def test_head_beats_chance_and_reloads_identically(name, colour_features):
    from threadpoolctl import threadpool_info

    X, y, X_test, y_test = colour_features
    threads = [pool["num_threads"] for pool in threadpool_info()]
    est = fit_classical(name, X, y, seed=0)
    assert [pool["num_threads"] for pool in threadpool_info()] == threads  # the logistic fit's limit is undone
    accuracy = float((est.predict(X_test) == y_test).mean())
    assert accuracy > 0.6, f"{name}: {accuracy:.2f} on 3 colour classes (chance 0.33)"
    config, tensors = to_tensors(name, X, y, seed=0, fitted=est)
    assert all(k.startswith(PREFIX) for k in tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the refit guard must stay silent
        reloaded = from_tensors(*bundle_round_trip(config, tensors))
    assert np.array_equal(reloaded.predict_proba(X_test), est.predict_proba(X_test))
    # without `fitted`, to_tensors fits itself, to the same result
    assert np.array_equal(from_tensors(*to_tensors(name, X, y, seed=0)).predict_proba(X_test),
                          est.predict_proba(X_test))


def test_logistic_is_stored_by_parameters_the_others_fitted_without_training_data(colour_features):
    X, y, _, _ = colour_features
    config, tensors = to_tensors("logistic", X, y)
    assert config["storage"] == "parameters" and f"{PREFIX}features" not in tensors
    config, tensors = to_tensors("knn", X, y)  # tests/test_classical_skops.py: the skops format, old bundles
    assert config["storage"] == "skops" and list(tensors) == [f"{PREFIX}skops"]


def test_bad_head_and_bad_data_are_refused(colour_features):
    X, y, _, _ = colour_features
    with pytest.raises(HeadstartError, match="unknown classical head"):
        fit_classical("xgboost", X, y)
    with pytest.raises(DataError, match="two classes"):
        fit_classical("logistic", X, np.zeros(len(X), dtype=int))
    with pytest.raises(DataError, match="class codes"):
        fit_classical("logistic", X, y + 0.5)
    with pytest.raises(DataError, match="2 examples of every class"):
        fit_classical("svm", X[:3], np.array([0, 0, 1]))
    est = fit_classical("knn", X[:3], np.array([0, 2, 0]))  # fewer rows than neighbours; class 1 never seen
    proba = predict_proba_full(est, X[:4], n_classes=3)
    assert proba.shape == (4, 3) and np.all(proba[:, 1] == 0) and np.allclose(proba.sum(1), 1)


def test_embedder_in_a_pipeline_on_images(colour_sets):
    (train, y), (test, y_test), _ = colour_sets
    torch.manual_seed(0)
    pipe = make_pipeline(tiny_embedder(), LogisticRegression(max_iter=1000)).fit(train, y)
    assert pipe.score(test, y_test) > 0.6
    embedder = pipe[0]
    names = embedder.get_feature_names_out()
    assert len(names) == embedder.n_features_out_ == embedder.transform(test[:2]).shape[1] and names[0] == "embedder0"


def test_embedder_on_real_inputs_keeps_what_numeric_checks_test(colour_sets):
    """What the inapplicable numeric checks ask, asked on paths: order, subsets, idempotence, one-column tables."""
    (train, _), _, embedder = colour_sets
    items = train[::4]
    feats = embedder.transform(items)
    assert feats.dtype == np.float32 and feats.shape[0] == len(items)
    perm = np.random.default_rng(0).permutation(len(items))
    assert np.array_equal(embedder.transform([items[i] for i in perm]), feats[perm])
    fresh = clone(embedder).set_params(use_cache=False)
    fresh.backbone_ = embedder.backbone_  # same weights, computed anew one by one
    fresh.modality_, fresh.n_features_out_ = embedder.modality_, embedder.n_features_out_
    np.testing.assert_allclose(np.vstack([fresh.transform([p]) for p in items[:3]]), feats[:3], atol=1e-5)
    before = dict(embedder.__dict__)
    assert np.array_equal(embedder.transform(np.array(items, dtype=object)[:, None]), feats)
    assert embedder.__dict__.keys() == before.keys()
    with pytest.raises(TypeError, match="not an image path or a text"):
        embedder.transform(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="single"):
        clone(embedder).fit(items[0])


def test_embedder_names_the_first_unreadable_input(colour_sets, tmp_path):
    (train, _), _, embedder = colour_sets
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: cannot be read"):
        embedder.transform([train[0], str(broken)])
    with pytest.raises(DataError, match="missing.png: no such image file"):
        embedder.transform([str(tmp_path / "missing.png")])


def test_embedder_passes_the_estimator_checks_that_apply():
    results = check_estimator(tiny_embedder(), expected_failed_checks=EMBEDDER_INAPPLICABLE_CHECKS,
                              on_fail=None, on_skip=None)
    failed = {r["check_name"]: repr(r["exception"]) for r in results if r["status"] == "failed"}
    assert not failed
    # the list of inapplicable checks stays exact: each of them really fails, every other one passes
    assert not [r["check_name"] for r in results if r["expected_to_fail"] and r["status"] == "passed"]
    passed = {r["check_name"] for r in results if r["status"] == "passed"}
    assert {"check_no_attributes_set_in_init", "check_parameters_default_constructible", "check_get_params_invariance",
            "check_set_params", "check_dont_overwrite_parameters", "check_estimator_cloneable",
            "check_transformers_unfitted", "check_fit_check_is_fitted"} <= passed


def test_embedder_refuses_a_backbone_of_another_modality():
    with pytest.raises(ValueError, match="is for texts"):
        Embedder(backbone="minilm_l6", modality="image").fit(["a"])


def test_text_embedder_pipeline_with_the_packaged_encoder():
    positive = ["I loved this film", "What a wonderful day", "The food was delicious", "Great service, very happy",
                "An excellent and moving story", "I really enjoyed the concert", "Fantastic, would buy again",
                "The staff were kind and helpful"]
    negative = ["I hated this film", "What a terrible day", "The food was disgusting", "Awful service, very angry",
                "A boring and painful story", "I really disliked the concert", "Broken on arrival, never again",
                "The staff were rude and useless"]
    pipe = make_pipeline(Embedder(backbone="minilm_l6", modality="text"), LogisticRegression(max_iter=1000))
    pipe.fit(positive + negative, [1] * 8 + [0] * 8)
    held_out = ["This was a delightful experience", "Absolutely horrible, I want a refund",
                "Lovely people and tasty dishes", "The worst movie I have ever seen"]
    assert list(pipe.predict(held_out)) == [1, 0, 1, 0]
    assert pipe[0].modality_ == "text" and pipe[0].n_features_out_ == 384


@pytest.mark.parametrize("head", ["logistic", "random-forest"])
def test_classical_head_through_the_estimator_and_bundle(colour_folder, tmp_path, head):
    import headstart as hs

    clf = hs.ImageClassifier(backbone="timm:test_efficientnet", pretrained=False, image_size=32, head=head,
                             verbose=False).fit(colour_folder)
    assert clf.metrics_["validation"]["accuracy"] > 0.6 and clf.history_ == []
    reloaded = hs.load(clf.save(str(tmp_path / f"{head}.hs")))
    assert np.array_equal(reloaded.predict_proba(colour_folder), clf.predict_proba(colour_folder))
    again = hs.load(reloaded.save(str(tmp_path / "again.hs")))  # a reloaded classical model saves again
    assert np.array_equal(again.predict_proba(colour_folder), clf.predict_proba(colour_folder))
    with pytest.raises(hs.HeadstartError, match="frozen features"):
        hs.ImageClassifier(backbone="timm:test_efficientnet", pretrained=False, image_size=32, head=head,
                           strategy="full", verbose=False).fit(colour_folder)
