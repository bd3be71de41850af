"""Few-shot: prototypes on any backbone, SetFit-style tuning for text, N-way K-shot episodes, auto's rule."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import (
    COLOURS,
    TINY,
    TINY_SIZE,
    checkpoints_written,
    interrupted_after_first_checkpoint,
    make_class_images,
)

import headstart as hs
from headstart.methods.fewshot import PrototypeHead, leave_one_out_scores, pair_loss


def test_prototypes_are_centred_normalised_class_means():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 8))
    labels = np.repeat(np.arange(3), 4)
    feats = torch.as_tensor(centres[labels] + rng.normal(0, 0.3, (12, 8)), dtype=torch.float32)
    head = PrototypeHead(8, 3)
    head.set_prototypes(feats, torch.as_tensor(labels))
    centred = torch.nn.functional.normalize(feats - feats.mean(0), dim=-1)
    expected = torch.stack([torch.nn.functional.normalize(centred[labels == c].mean(0), dim=0) for c in range(3)])
    assert torch.allclose(head.prototypes, expected, atol=1e-6)
    queries = torch.as_tensor(centres + rng.normal(0, 0.3, (3, 8)), dtype=torch.float32)
    assert head(queries).argmax(-1).tolist() == [0, 1, 2]
    with pytest.raises(hs.DataError, match="no example"):
        PrototypeHead(8, 4).set_prototypes(feats, torch.as_tensor(labels))


def test_leave_one_out_leaves_the_row_out():
    # two classes; row 0 sits next to class 1: with itself in its prototype it would look right, without it not
    feats = torch.tensor([[0.1, 1.0], [1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    head = PrototypeHead(2, 2)
    head.set_prototypes(feats, labels)
    proba, kept = leave_one_out_scores(head, feats, labels)
    assert kept.all() and proba.shape == (5, 2)
    assert proba[0].argmax() == 1 and proba[1].argmax() == 0 and proba[3].argmax() == 1


def test_setfit_loss_scores_every_pair_of_the_batch_against_the_labels():
    labels = torch.tensor([0, 0, 1, 1, 2])
    classes_apart = torch.eye(3)[labels] * 2.0  # classmates identical, other classes orthogonal: nothing to learn
    assert pair_loss(classes_apart, labels).item() == pytest.approx(0.0, abs=1e-7)
    emb = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    cos = torch.nn.functional.cosine_similarity
    expected = np.mean([(cos(emb[i], emb[j], dim=0).item() - float(labels[i] == labels[j])) ** 2
                        for i in range(5) for j in range(i + 1, 5)])  # all 10 pairs, each once
    loss = pair_loss(emb, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert emb.grad.abs().sum() > 0


def test_auto_picks_prototypes_for_a_few_shots_and_the_bundle_keeps_them(tmp_path, capsys):
    data = make_class_images(str(tmp_path / "few"), COLOURS, per_class=3)
    clf = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, verbose=True).fit(data)
    assert clf.strategy_["name"] == "fewshot" and clf.advice_.strategy == "fewshot"
    assert "auto: -> fewshot" in capsys.readouterr().err
    assert clf.metrics_["validation"]["leave_one_out"] and clf.metrics_["validation"]["n"] == 9
    reloaded = hs.load(clf.save(str(tmp_path / "few.hs")))
    assert isinstance(reloaded.model_.head, PrototypeHead)
    assert torch.equal(reloaded.model_.head.prototypes, clf.model_.head.prototypes)
    assert np.array_equal(reloaded.predict_proba(data), clf.predict_proba(data))
    assert reloaded.evaluate(data)["accuracy"] == clf.evaluate(data)["accuracy"]


def test_episodes_on_fashion_mnist_beat_chance_with_intervals(fashion):
    train, _ = fashion
    result = hs.fewshot_eval(train, ways=5, shots=(1, 5), episodes=20, finetune_episodes=0, image_size=64,
                             verbose=False)
    one, five = result["shots"]["1"], result["shots"]["5"]
    assert set(five) == {"prototype", "logistic"} and five["prototype"]["episodes"] == 20
    assert five["prototype"]["mean"] > 0.5 > 0.2  # chance is 1/5
    assert five["prototype"]["mean"] > one["prototype"]["mean"]  # more shots help
    assert 0 < five["prototype"]["ci95"] < 0.1
    with pytest.raises(hs.DataError, match="lower --ways or --shots"):
        hs.fewshot_eval(train, ways=5, shots=(20,), episodes=1, image_size=64, verbose=False)


def test_setfit_pulls_classmates_together_on_real_tweets(tmp_path):
    from headstart.data import tweets
    from headstart.inference import run_over

    train_csv, test_csv, _ = tweets.export_split(str(tmp_path / "tw"), per_class_train=6, test_size=30, seed=0)
    clf = hs.TextClassifier(strategy="fewshot", epochs=2, verbose=False).fit(train_csv)
    assert clf.backbone_trained_ and clf.strategy_["stages"][0]["name"] == "setfit"
    data = clf._load(train_csv)

    def margin(backbone) -> float:  # mean cosine to classmates minus to the others
        feats, _ = run_over(backbone, data.items, verbose=False)
        sims = torch.nn.functional.normalize(torch.as_tensor(feats), dim=-1)
        sims = (sims @ sims.T).numpy()
        same = data.targets[:, None] == data.targets[None, :]
        off = ~np.eye(len(sims), dtype=bool)
        return float(sims[same & off].mean() - sims[~same].mean())

    assert margin(clf.model_.backbone) > margin(hs.create_backbone("minilm_l6")) + 0.01
    path = clf.save(str(tmp_path / "tw.hs"))
    texts = ["what a great day", "this is awful", "the meeting is at noon"]
    assert np.allclose(hs.load(path).predict_proba(texts), clf.predict_proba(texts), atol=1e-5)


def test_cli_fewshot_eval_json(fashion, tmp_path):
    import shutil

    train, _ = fashion
    for name in sorted(os.listdir(train))[:3]:  # 3 classes x 4 images: the command's wiring, not the accuracy
        os.makedirs(tmp_path / "few" / name)
        for f in sorted(os.listdir(os.path.join(train, name)))[:4]:
            shutil.copy(os.path.join(train, name, f), tmp_path / "few" / name / f)
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", "fewshot-eval", str(tmp_path / "few"), "--ways", "3",
                           "--queries", "2", "--shots",
                           "1,2", "--episodes", "5", "--finetune-episodes", "0", "--image-size", "32", "--json"],
                          capture_output=True, text=True, timeout=600, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ways"] == 3 and set(result["shots"]) == {"1", "2"}
    assert result["shots"]["2"]["logistic"]["episodes"] == 5


def test_few_shot_rule_is_per_modality():
    from headstart.advisor import few_shot_advice

    assert few_shot_advice({"a": 7, "b": 12}, "image").strategy == "fewshot"  # images: prototypes up to 7 shots
    assert few_shot_advice({"a": 8, "b": 12}, "image") is None
    assert few_shot_advice({"a": 8, "b": 12}, "text") is None  # texts: the SetFit path did not pay at 8 tweets
    assert few_shot_advice({"a": 5, "b": 12}, "text").strategy == "fewshot"
    setfit = few_shot_advice({"a": 64, "b": 70}, "text")  # texts in SetFit's measured range
    assert setfit.strategy == "setfit" and setfit.options == {"epochs": 4}
    assert few_shot_advice({"a": 64, "b": 70}, "image") is None
    assert few_shot_advice({"a": 600, "b": 700}, "text") is None  # two-stage matched it there, for less time
    assert few_shot_advice({"a": 64, "b": 70}, "text", head="torch-mlp") is None
    assert few_shot_advice({"a": 64, "b": 70}, "text", time_limit=1.0) is None  # tuning would overrun the limit


def test_the_setfit_estimate_is_measured_on_the_texts_and_leaves_the_weights_alone():
    from headstart.advisor import few_shot_advice
    from headstart.methods.fewshot import estimate_setfit_seconds

    backbone = hs.create_backbone("minilm_l6", modality="text")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    short = ["good", "bad", "fine", "meh"] * 2
    long = [" ".join(["a rather long review of a dress that fits well and looks fine"] * 4)] * 8
    assert estimate_setfit_seconds(backbone, short, 4) > 0 and estimate_setfit_seconds(backbone, long, 4) > 0
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    passes = []
    advice = few_shot_advice({"a": 64, "b": 70}, "text", estimate=lambda p: passes.append(p) or 123.0)
    assert passes == [4] and advice.measurements["setfit_seconds_estimate"] == 123
    assert "about 123 s (timed on a few batches of these texts)" in " ".join(advice.reasons)
    assert few_shot_advice({"a": 64, "b": 70}, "text", time_limit=100, estimate=lambda p: 123.0) is None


def test_auto_tunes_the_encoder_setfit_style_for_dozens_of_tweets_per_class(tmp_path):
    from headstart.data import tweets
    from headstart.probe import C_GRID, is_probe_head

    train_csv, test_csv, _ = tweets.export_split(str(tmp_path / "tw"), per_class_train=32, test_size=90, seed=0)
    # strategy="auto"; the encoder given (MiniLM), so the test is of setfit, not of the backbone choice
    clf = hs.TextClassifier(backbone="minilm_l6", verbose=False).fit(train_csv)
    assert clf.advice_.strategy == "setfit" and clf.strategy_["name"] == "setfit" and clf.backbone_trained_
    assert is_probe_head(clf.model_.head) and clf.history_[-1]["probe"]["C"] in C_GRID
    validation = clf.metrics_["validation"]  # out of sample: the held-out fifth, tuned and solved without it
    assert validation["held_out"] and validation["n"] == 19 and "optimistic" not in validation
    assert clf.metrics_["refit"]["rows"] == 96  # then the head is solved again on every label
    candidates = clf.advice_.measurements["candidates"]  # raced on those rows: the untuned encoder, no transfer
    assert candidates[0]["candidate"].startswith("transfer (setfit") and candidates[0]["shipped"]
    assert candidates[1]["candidate"].startswith("transfer (features on minilm_l6, the encoder untuned")
    assert candidates[2]["candidate"].startswith("no transfer (TF-IDF")
    assert [c["shipped"] for c in candidates] == [True, False, False]
    assert clf.evaluate(test_csv)["accuracy"] > 0.45  # 3 classes: chance is 1/3
    texts = ["what a great day", "this is awful", "the meeting is at noon"]
    assert np.allclose(hs.load(clf.save(str(tmp_path / "sf.hs"))).predict_proba(texts), clf.predict_proba(texts),
                       atol=1e-5)


def test_setfit_refuses_images(colour_folder):
    with pytest.raises(hs.HeadstartError, match="setfit"):
        hs.ImageClassifier(TINY, strategy="setfit", pretrained=False, image_size=TINY_SIZE, verbose=False
                           ).fit(colour_folder)


def _run_outputs(out_dir) -> tuple[list[dict], str]:
    """metrics.jsonl's records and the report page a fit left in `out_dir` (asserting the bundle is there)."""
    assert os.path.isfile(os.path.join(out_dir, "model.hs"))
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(out_dir, "report", "index.html")) as f:
        return records, f.read()


def test_setfit_with_out_dir_writes_the_run_outputs_every_strategy_writes(tmp_path):
    from headstart.data import tweets

    train_csv, _, _ = tweets.export_split(str(tmp_path / "tw"), per_class_train=6, test_size=3, seed=0)
    out = str(tmp_path / "run")
    clf = hs.TextClassifier(strategy="setfit", out_dir=out, verbose=False).fit(train_csv)
    records, page = _run_outputs(out)
    passes = [r for r in records if r.get("stage") == "setfit"]
    assert [r["epoch"] for r in passes] == list(range(1, clf.strategy_["stages"][0]["epochs"] + 1))
    assert records[-2]["stage"] == "head" and "probe" in records[-2]  # the solved head, after the passes
    final = records[-1]
    assert final["event"] == "final" and final["strategy"] == "setfit" and final["backbone"] == "minilm_l6"
    assert final["validation"] == json.loads(json.dumps(clf.metrics_["validation"]))  # the same numbers
    assert "setfit" in page and "learning curves" in page and "calibration" in page
    assert np.array_equal(hs.load(os.path.join(out, "model.hs")).predict_proba(["a fine day"]),
                          clf.predict_proba(["a fine day"]))


def test_fewshot_prototypes_with_out_dir_write_the_same_run_outputs(tmp_path, colour_folder):
    out = str(tmp_path / "run")
    clf = hs.ImageClassifier(TINY, strategy="fewshot", pretrained=False, image_size=TINY_SIZE, out_dir=out,
                             verbose=False).fit(colour_folder)
    records, page = _run_outputs(out)
    assert records[-1]["event"] == "final" and records[-1]["strategy"] == "fewshot"
    assert records[-1]["validation"]["leave_one_out"] and records[-1]["validation"]["n"] == 36
    assert records[-1]["validation"]["accuracy"] == clf.metrics_["validation"]["accuracy"]
    assert "fewshot" in page and "confusion matrix" in page and "calibration" in page


def test_fewshot_with_a_validation_set_scores_it_and_refuses_unknown_labels(tmp_path, colour_folder):
    valid = make_class_images(str(tmp_path / "valid"), COLOURS, per_class=4, seed=1)
    clf = hs.ImageClassifier(TINY, strategy="fewshot", pretrained=False, image_size=TINY_SIZE,
                             verbose=False).fit(colour_folder, valid=valid)
    assert clf.data_summary_["validation"] == "given" and clf.metrics_["validation"]["n"] == 12
    assert "leave_one_out" not in clf.metrics_["validation"]
    stranger = make_class_images(str(tmp_path / "odd"), {"red": (200, 40, 40), "purple": (120, 0, 120)}, per_class=2)
    with pytest.raises(hs.HeadstartError, match="label 'purple' was not among the training classes"):
        hs.ImageClassifier(TINY, strategy="fewshot", pretrained=False, image_size=TINY_SIZE,
                           verbose=False).fit(colour_folder, valid=stranger)


@pytest.mark.parametrize("strategy", ["fewshot", "auto"])  # auto picks prototypes for 3 images per class
def test_resume_on_a_fewshot_path_is_refused_not_ignored(tmp_path, strategy):
    data = make_class_images(str(tmp_path / "few"), COLOURS, per_class=3)
    clf = hs.ImageClassifier(TINY, strategy=strategy, pretrained=False, image_size=TINY_SIZE,
                             out_dir=str(tmp_path / "run"), verbose=False)
    with pytest.raises(hs.HeadstartError) as err:
        clf.fit(data, resume=str(tmp_path / "run"))
    message = str(err.value)
    assert "strategy 'fewshot'" in message and "nothing to resume" in message and "without --resume" in message
    assert ("chosen by auto" in message) == (strategy == "auto") and "\n" not in message
    assert not hasattr(clf, "model_")


def test_resume_on_setfit_at_quality_best_is_refused_before_any_tuning(tmp_path):
    from headstart.data import tweets

    train_csv, _, _ = tweets.export_split(str(tmp_path / "tw"), per_class_train=6, test_size=3, seed=0)
    clf = hs.TextClassifier(strategy="setfit", quality="best", out_dir=str(tmp_path / "run"), verbose=False)
    with pytest.raises(hs.HeadstartError, match=r"strategy 'setfit' spends its time budget over several tunings "
                                                r"and has nothing to resume; run it again without --resume"):
        clf.fit(train_csv, resume=str(tmp_path / "run"))
    assert not hasattr(clf, "model_") and not os.path.exists(tmp_path / "run" / "model.hs")


def test_interrupted_setfit_resumes_to_the_uninterrupted_encoder(tmp_path, monkeypatch):
    from headstart.data import tweets

    train_csv, _, _ = tweets.export_split(str(tmp_path / "tw"), per_class_train=6, test_size=3, seed=0)
    other_csv, _, _ = tweets.export_split(str(tmp_path / "other"), per_class_train=6, test_size=3, seed=1)
    params = dict(strategy="setfit", pretrained=False, verbose=False)  # a random MiniLM: its weights still move
    whole = hs.TextClassifier(**params).fit(train_csv)
    run = str(tmp_path / "run")
    with interrupted_after_first_checkpoint(monkeypatch):
        hs.TextClassifier(**params, out_dir=run).fit(train_csv)
    with pytest.raises(hs.HeadstartError, match=r"run/checkpoint/checkpoint.safetensors: written for different "
                                                r"training and validation data"):
        hs.TextClassifier(**params).fit(other_csv, resume=run)
    with checkpoints_written(monkeypatch) as saved:
        resumed = hs.TextClassifier(**params, out_dir=run).fit(train_csv, resume=run)
    assert saved == [(0, 2), (0, 3), (0, 4)]
    for (name, a), b in zip(whole.model_.state_dict().items(), resumed.model_.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    passes = [r for r in resumed.history_ if r["stage"] == "setfit"]
    assert [r["epoch"] for r in passes] == [1, 2, 3, 4] and passes == whole.history_[:4]
    logged, _ = _run_outputs(run)
    assert [r["epoch"] for r in logged if r.get("stage") == "setfit"] == [1, 2, 3, 4], "resumed passes logged again"
    assert not os.path.exists(os.path.join(run, "checkpoint")) and os.path.isfile(os.path.join(run, "model.hs"))


