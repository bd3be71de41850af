"""strategy='auto' and transferability: measured decisions, said out loud, stored in the bundle."""

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE

import headstart as hs
from headstart.advisor import decide
from headstart.rank import leep, logme, probe_accuracy
from headstart.strategies import get_strategy

BASE = dict(n_classes=10, logme_score=0.1, seconds_per_item=0.01, epochs=3, time_limit=None)


@pytest.mark.parametrize("per_class, probe, baseline, time_limit, expected", [
    (4, 0.9, 0.3, None, "features"),          # tiny: fine-tuning would memorise
    (8, 0.35, 0.2, None, "features"),         # 10 per class less the hold-out: validation cannot judge a fine-tune
    (30, 0.85, 0.3, None, "features"),        # small and similar: a fine-tune gained nothing there
    (80, 0.8, 0.3, None, "features"),         # similar, under HEAD_ONLY_PER_CLASS
    (80, 0.5, 0.3, None, "two-stage"),        # unlike the source (gain 0.44): fine-tuning may adapt the features
    (80, 0.8, 0.79, None, "features"),        # raw inputs as good, but the features fit well: head only
    (30, 0.35, 0.2, None, "two-stage"),       # small and unlike the source
    (200, 0.8, 0.3, None, "two-stage"),       # medium
    (200, 0.8, 0.3, 10, "features"),          # medium, but fine-tuning does not fit the time limit
    (600, 0.3, 0.5, None, "truncate"),        # negative transfer with data enough to retrain upper layers
    (240, 0.815, 0.799, None, "truncate"),    # Fashion-MNIST @64 px, 300 per class: within the margin, truncate won
    (100, 0.3, 0.5, None, "two-stage"),       # negative transfer, too little data to retrain: size rules
    (2000, 0.4, 0.2, 10**9, "full"),          # large and unlike the source
    (2000, 0.9, 0.2, 10**9, "two-stage"),     # large and similar
])
def test_rules(per_class, probe, baseline, time_limit, expected):
    advice = decide(**{**BASE, "time_limit": time_limit}, per_class=per_class, n_train=per_class * 10, probe=probe,
                    baseline=baseline)
    assert advice.strategy == expected
    assert advice.reasons[-1].startswith(f"-> {expected}:")
    assert advice.measurements["probe_accuracy"] == probe
    if baseline >= probe:
        assert any("negative transfer" in r for r in advice.reasons)


def test_the_fine_tuning_estimate_is_reported_and_said():
    # 3 epochs x 400 examples x 0.1 s a forward pass x 3 (forward + backward)
    advice = decide(**{**BASE, "seconds_per_item": 0.1}, per_class=300, n_train=400, probe=0.85, baseline=0.3)
    assert advice.measurements["finetune_seconds_estimate"] == 360
    assert "fine-tuning 3 epoch(s) would take about 360 s here" in advice.reasons
    text = decide(**{**BASE, "seconds_per_item": 0.1}, per_class=300, n_train=400, probe=0.85, baseline=0.3,
                  modality="text")  # a text's training step costs 4 forward passes (measured on tweets)
    assert text.measurements["finetune_seconds_estimate"] == 480


def test_scores_prefer_informative_features():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.hstack([np.eye(3)[y] * 3 + rng.normal(0, 1, (300, 3)), rng.normal(0, 1, (300, 20))])
    noise = rng.normal(0, 1, (300, 23))
    assert logme(good, y) > logme(noise, y)
    assert probe_accuracy(good, y) > 0.9 > 0.5 > probe_accuracy(noise, y)
    informative = np.eye(5)[np.where(rng.random(300) < 0.8, y, rng.integers(0, 5, 300))] * 0.9 + 0.02
    assert leep(informative, y) > leep(np.full((300, 5), 0.2), y) == pytest.approx(np.log(1 / 3), abs=0.05)


@pytest.mark.parametrize("rows", [40, 300])  # fewer rows than features, and more
def test_logme_is_the_same_from_the_gram_matrix_as_from_the_covariance(rows):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, rows)
    features = np.eye(3)[y] @ rng.normal(0, 1, (3, 120)) + rng.normal(0, 1, (rows, 120))
    from_gram, from_covariance = logme(features, y, gram=True), logme(features, y, gram=False)
    assert from_gram == pytest.approx(from_covariance, rel=1e-9, abs=1e-9)
    assert logme(features, y) == (from_gram if rows < 120 else from_covariance)  # the default: the smaller one


def test_auto_explains_itself_and_the_bundle_keeps_it(colour_folder, tmp_path, capsys):
    clf = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, epochs=1, head_epochs=10,
                             batch_size=8, verbose=True).fit(colour_folder)
    assert clf.advice_.strategy == clf.strategy_["name"]
    assert "auto: -> " in capsys.readouterr().err
    reloaded = hs.load(clf.save(str(tmp_path / "a.hs")))
    assert reloaded.advice_.reasons == clf.advice_.reasons
    assert {"probe_accuracy", "logme", "raw_input_accuracy"} <= set(reloaded.advice_.measurements)


def test_truncate_retrains_upper_groups_and_keeps_lower(colour_folder):
    torch.manual_seed(0)
    ref = hs.create_backbone(TINY, pretrained=False, image_size=TINY_SIZE).state_dict()
    clf = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="truncate", epochs=1,
                             batch_size=8, verbose=False, seed=0).fit(colour_folder)
    after = {k: v.cpu() for k, v in clf.model_.backbone.state_dict().items()}
    assert torch.equal(after["body.conv_stem.weight"], ref["body.conv_stem.weight"])
    assert not torch.equal(after["body.conv_head.weight"], ref["body.conv_head.weight"])


def test_lora_strategy_round_trips(colour_folder, tmp_path):
    clf = hs.ImageClassifier(backbone="timm:test_vit", pretrained=False, image_size=32, strategy="lora", epochs=1,
                             head_epochs=5, batch_size=8, verbose=False).fit(colour_folder)
    assert [r["stage"] for r in clf.history_][-1] == "lora"
    reloaded = hs.load(clf.save(str(tmp_path / "l.hs")))
    assert np.array_equal(reloaded.predict_proba(colour_folder), clf.predict_proba(colour_folder))


def test_rank_puts_imagenet_weights_above_random_ones(fashion):
    train, _ = fashion
    results = hs.rank(train, ["efficientnet_lite0@random", "efficientnet_lite0"], image_size=64, verbose=False)
    assert [r["backbone"] for r in results] == ["efficientnet_lite0", "efficientnet_lite0@random"]
    assert results[0]["probe_accuracy"] > results[1]["probe_accuracy"]
    assert "leep" in results[0] and results[0]["seconds"] >= 0


def test_texts_fine_tune_at_the_trainer_recipe_and_say_so():
    from headstart.advisor import TEXT_FINETUNE, Advice, with_text_finetune

    for planned in ("two-stage", "full"):
        tuned = with_text_finetune(Advice(planned, reasons=["medium data"]))
        assert tuned.strategy == "full" and tuned.options == TEXT_FINETUNE
        assert tuned.reasons[0] == "medium data" and tuned.reasons[-1].startswith("-> full (texts")
        assert ("in place of two-stage" in tuned.reasons[-1]) == (planned == "two-stage")
        assert f"batches of {TEXT_FINETUNE['finetune_batch_size']}" in tuned.reasons[-1]
        (stage,) = get_strategy(tuned.strategy, **tuned.options).plan(["embeddings", "layer.0", "layer.1"], 3, 1e-3, 50)
        assert stage.batch_size == 8 and set(stage.lrs.values()) == {1e-3, 5e-5}  # a fresh head, one encoder rate
        assert stage.lrs["layer.0"] == stage.lrs["embeddings"] == 5e-5
    head_only = with_text_finetune(Advice("features", reasons=["few"]))
    assert head_only.strategy == "features" and head_only.options == {} and head_only.reasons == ["few"]


def test_negative_transfer_on_texts_is_said_but_never_retrains_layers_from_scratch():
    flagged = dict(BASE, per_class=409, n_train=1229, n_classes=3, probe=0.595, baseline=0.618)
    assert decide(**flagged).strategy == "truncate"  # images: measured to pay at this size
    text = decide(**flagged, modality="text")
    assert text.strategy == "two-stage"
    assert any("negative transfer" in r for r in text.reasons) and any("texts:" in r for r in text.reasons)


def test_raw_input_reference_learns_real_images_and_leaves_blas_threads_alone(fashion):
    from threadpoolctl import threadpool_info

    from headstart.advisor import raw_input_accuracy
    from headstart.modalities import MODALITIES

    data = MODALITIES["image"].load(fashion[0], "classification", False, {"path": "path", "label": "label"})
    before = [pool["num_threads"] for pool in threadpool_info()]
    accuracy = raw_input_accuracy("image", data.items, data.targets)
    assert 0.4 < accuracy < 1.0  # 16x16 grey pixels tell Fashion-MNIST's 10 classes apart well above chance (0.1)
    assert [pool["num_threads"] for pool in threadpool_info()] == before  # one thread only inside the solve


@pytest.mark.parametrize("per_class", [4, 30, 80, 200, 600, 2000])
@pytest.mark.parametrize("probe", [0.3, 0.6, 0.95])
def test_without_a_time_limit_the_rules_ignore_the_machines_speed(per_class, probe):
    fast, slow = (decide(**{**BASE, "seconds_per_item": s}, per_class=per_class, n_train=per_class * 10,
                         probe=probe, baseline=0.4) for s in (0.001, 10.0))
    assert (fast.strategy, fast.options) == (slow.strategy, slow.options)


def test_a_seeded_plan_is_the_same_on_a_machine_ten_times_slower(colour_folder, monkeypatch):
    import time

    def plan() -> tuple:
        clf = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, epochs=1, head_epochs=5,
                                 batch_size=8, verbose=False, seed=0).fit(colour_folder)
        return clf.advice_.strategy, clf.advice_.options, clf.strategy_

    normal = plan()
    real = time.perf_counter
    start = real()
    monkeypatch.setattr(time, "perf_counter", lambda: start + 10 * (real() - start))  # every timing reads 10x
    assert plan() == normal
