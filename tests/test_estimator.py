import json
import os
import zipfile

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE

import headstart as hs
from headstart import inference
from headstart.bundle import read_bundle


def _clf(**kw):
    params = dict(backbone=TINY, pretrained=False, image_size=TINY_SIZE, epochs=2, head_epochs=15, lr=1e-2,
                  batch_size=8, verbose=False, seed=0)
    params.update(kw)
    return hs.ImageClassifier(**params)


@pytest.mark.parametrize("strategy", ["features", "finetune", "two-stage", "full"])
def test_fit_predict_save_load_round_trip(colour_folder, tmp_path, strategy):
    clf = _clf(strategy=strategy).fit(colour_folder)
    assert clf.classes_ == ["blue", "green", "red"]
    assert clf.metrics_["validation"]["n"] > 0
    proba = clf.predict_proba(colour_folder)
    assert proba.shape == (36, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    path = clf.save(str(tmp_path / "m.hs"))
    again = hs.load(path)
    assert np.array_equal(again.predict_proba(colour_folder), proba), "a reloaded bundle must predict identically"
    assert again.predict(colour_folder) == clf.predict(colour_folder)


def test_fits_in_one_process_may_ask_for_different_precisions(colour_folder):
    # Accelerate holds one precision per process; a second fit asking for another must not fail.
    from headstart.training_step import resolve_precision

    assert resolve_precision("auto") == ("bf16" if torch.cuda.is_available() else "no")
    full = _clf(strategy="full", epochs=1, mixed_precision="no").fit(colour_folder)
    half = _clf(strategy="full", epochs=1, mixed_precision="bf16").fit(colour_folder)
    assert half.history_[0]["train_loss"] != full.history_[0]["train_loss"], "bf16 autocast must have run"
    assert np.isfinite(full.predict_proba(colour_folder)).all()


def test_colours_are_learned_from_random_features(colour_folder):
    clf = _clf(strategy="features", head_epochs=40).fit(colour_folder)
    assert clf.evaluate(colour_folder)["accuracy"] >= 0.8


def test_evaluate_reports_the_required_numbers(colour_folder):
    m = _clf().fit(colour_folder).evaluate(colour_folder)
    assert {"accuracy", "macro_f1", "n", "per_class", "confusion_matrix"} <= set(m)
    assert m["n"] == 36 and np.array(m["confusion_matrix"]).sum() == 36


def test_same_seed_same_metrics_on_cpu(colour_folder):
    a = _clf(strategy="two-stage", seed=3).fit(colour_folder)
    b = _clf(strategy="two-stage", seed=3).fit(colour_folder)
    assert [r["val_loss"] for r in a.history_] == [r["val_loss"] for r in b.history_]
    assert np.array_equal(a.predict_proba(colour_folder), b.predict_proba(colour_folder))


def test_second_extraction_hits_the_cache(colour_folder, monkeypatch):
    backbone = hs.create_backbone(TINY, pretrained=False, image_size=TINY_SIZE)
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(colour_folder) for f in fs)
    first, ok = inference.embed_images(backbone, paths, verbose=False)
    calls = []
    real = inference.run_over
    monkeypatch.setattr(inference, "run_over", lambda *a, **k: calls.append(1) or real(*a, **k))
    second, ok2 = inference.embed_images(backbone, paths, verbose=False)
    assert calls == [] and ok.all() and ok2.all()
    assert np.array_equal(first, second)
    # new weights mean a new cache key: nothing is reused
    with torch.no_grad():
        next(backbone.parameters()).mul_(2)
    inference.embed_images(backbone, paths[:3], verbose=False)
    assert calls == [1]


def test_half_written_cache_shard_is_recomputed(colour_folder):
    backbone = hs.create_backbone(TINY, pretrained=False, image_size=TINY_SIZE)
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(colour_folder) for f in fs)[:5]
    first, _ = inference.embed_images(backbone, paths, verbose=False)
    cache = inference.feature_cache_for(backbone)
    for name in os.listdir(cache.dir):
        if name.endswith(".npy"):
            path = os.path.join(cache.dir, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)  # a crash mid-write
    again, ok = inference.embed_images(backbone, paths, verbose=False)
    assert ok.all() and np.allclose(first, again)


def test_unreadable_image_at_predict_is_a_nan_row(colour_folder, tmp_path):
    clf = _clf().fit(colour_folder)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = os.path.join(colour_folder, "red", "red_0.png")
    proba = clf.predict_proba([good, str(bad)])
    assert np.isfinite(proba[0]).all() and np.isnan(proba[1]).all()
    assert clf.predict([good, str(bad)])[1] is None


def test_regression_and_multilabel_from_csv(colour_folder, tmp_path):
    rows = [(f"train/{c}/{c}_{i}.png", v, tags) for c, v, tags in
            [("red", 1.0, "warm"), ("green", 2.0, "cool;natural"), ("blue", 3.0, "cool")] for i in range(12)]
    reg_csv, ml_csv = tmp_path / "reg.csv", tmp_path / "ml.csv"
    reg_csv.write_text("path,label\n" + "\n".join(f"{p},{v}" for p, v, _ in rows))
    ml_csv.write_text("path,label\n" + "\n".join(f"{p},{t}" for p, _, t in rows))
    reg = hs.ImageRegressor(backbone=TINY, pretrained=False, image_size=TINY_SIZE, head_epochs=40, lr=1e-2,
                            batch_size=8, verbose=False).fit(str(reg_csv))
    m = reg.evaluate(str(reg_csv))
    assert {"mae", "rmse", "r2"} <= set(m) and m["r2"] > 0.3  # the mean alone scores 0
    reloaded = hs.load(reg.save(str(tmp_path / "reg.hs")))
    assert reloaded.predict(os.path.join(colour_folder, "blue")) == reg.predict(os.path.join(colour_folder, "blue"))
    ml = _clf(task="multilabel", head_epochs=40).fit(str(ml_csv))
    assert ml.classes_ == ["cool", "natural", "warm"]
    assert ml.evaluate(str(ml_csv))["micro_f1"] > 0.8
    assert set(ml.predict([os.path.join(colour_folder, "red", "red_0.png")])[0]) <= {"cool", "natural", "warm"}


def test_bundle_is_safetensors_and_json_and_records_the_run(colour_folder, tmp_path):
    path = _clf().fit(colour_folder).save(str(tmp_path / "m.hs"))
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["config.json", "model.safetensors"]
        config = json.loads(zf.read("config.json"))
    assert config["labels"] == ["blue", "green", "red"] and config["backbone"]["arch"] == "test_efficientnet"
    assert config["backbone"]["preprocess"]["size"] == TINY_SIZE
    assert config["headstart_version"] == hs.__version__ and "accuracy" in config["metrics"]["validation"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")], "no temporary file is left behind"


def _rewrite(path, out, mutate):
    config, state = read_bundle(path)
    from headstart.bundle import write_bundle

    mutate(config)
    write_bundle(out, {k: v for k, v in config.items() if k not in ("format", "headstart_version")}, state)
    with zipfile.ZipFile(out) as zf:  # write_bundle stamps the current format: patch it back in
        files = {n: zf.read(n) for n in zf.namelist()}
    config_bytes = json.loads(files["config.json"])
    mutate(config_bytes)
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("config.json", json.dumps(config_bytes))
        zf.writestr("model.safetensors", files["model.safetensors"])


def test_bundle_from_a_newer_version_is_refused(colour_folder, tmp_path):
    path = _clf().fit(colour_folder).save(str(tmp_path / "m.hs"))
    newer = str(tmp_path / "newer.hs")
    _rewrite(path, newer, lambda c: c.update(format_version=99, headstart_version="9.0"))
    with pytest.raises(hs.BundleError, match="headstart 9.0 .*upgrade headstart"):
        hs.load(newer)


def test_pickles_are_never_loaded(tmp_path):
    evil = tmp_path / "model.hs"
    torch.save({"weights": torch.zeros(2)}, evil)  # a torch pickle, zip-based
    with pytest.raises(hs.BundleError, match="not a headstart bundle"):
        hs.load(str(evil))
    plain = tmp_path / "model.pkl"
    plain.write_bytes(b"\x80\x04\x95 pickle bytes")
    with pytest.raises(hs.BundleError, match="never loads pickled"):
        hs.load(str(plain))


def test_unfitted_model_says_so():
    with pytest.raises(hs.HeadstartError, match="not fitted"):
        _clf().predict(["x.png"])


def test_a_bundle_serves_as_a_backbone(colour_folder, tmp_path):
    first = _clf(strategy="finetune").fit(colour_folder)
    path = first.save(str(tmp_path / "first.hs"))
    second = _clf(backbone=path, strategy="features", image_size=None, pretrained=True).fit(colour_folder)
    # the new bundle records the base architecture, so it loads without the first bundle
    assert second.spec_.arch == "test_efficientnet" and second.spec_.preprocess.size == TINY_SIZE
    # the second model's backbone is the first model's fine-tuned backbone, weight for weight
    a, b = first.model_.backbone.state_dict(), second.model_.backbone.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = hs.load(second.save(str(tmp_path / "second.hs")))
    assert np.array_equal(again.predict_proba(colour_folder), second.predict_proba(colour_folder))


@pytest.mark.parametrize("augment", [True, False])
def test_augment_switches_the_random_crops_of_training_images(colour_folder, augment):
    from headstart.backbones import create_backbone, resolve_backbone
    from headstart.modalities import MODALITIES
    from headstart.plan_runner import input_loaders

    clf = _clf(augment=augment)
    data = MODALITIES["image"].load(colour_folder, "classification", False, {})
    backbone = create_backbone(resolve_backbone(TINY, "image"), pretrained=False, image_size=TINY_SIZE)
    train_loader, _ = input_loaders(clf, backbone, data, data, torch.Generator().manual_seed(0))
    dataset = train_loader.dataset
    first, second = dataset[0][1], dataset[0][1]
    assert torch.equal(first, second) is (not augment)


@pytest.mark.parametrize(("estimator_batch", "plan_batch", "expected"), [(32, 16, 16), (8, 16, 8), (32, None, 32)])
def test_a_stage_trains_in_the_plan_batch_size_capped_at_the_estimators(colour_folder, estimator_batch, plan_batch,
                                                                        expected):
    from headstart.backbones import create_backbone, resolve_backbone
    from headstart.modalities import MODALITIES
    from headstart.plan_runner import input_loaders
    from headstart.strategies import Stage

    clf = _clf(batch_size=estimator_batch)
    data = MODALITIES["image"].load(colour_folder, "classification", False, {})
    backbone = create_backbone(resolve_backbone(TINY, "image"), pretrained=False, image_size=TINY_SIZE)
    stage = Stage("finetune", 1, {"head": 1e-3}, batch_size=plan_batch)  # run_plan's call, as it makes it
    train_loader, val_loader = input_loaders(clf, backbone, data, data, torch.Generator().manual_seed(0),
                                             stage.train_batch(clf.batch_size))
    assert train_loader.batch_size == expected
    assert val_loader.batch_size == estimator_batch  # no gradients there: the larger batch is the faster one


def test_a_time_limit_stops_training_and_keeps_the_best_weights(colour_folder):
    """`time_limit` is a deadline for the whole fit: once the clock passes it (here: at once), no training batch
    starts; the epoch under way is validated, the stage stops and the fit completes with what it has."""
    clf = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="full", epochs=5,
                             verbose=False, time_limit=1e-9).fit(colour_folder)
    (record,) = clf.history_  # one epoch of five, and no example trained on
    assert record["stopped"] == "time limit, after 0 of this epoch's examples"
    unlimited = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="full", epochs=2,
                                   verbose=False).fit(colour_folder)
    assert len(unlimited.history_) == 2 and not any("stopped" in r for r in unlimited.history_)
