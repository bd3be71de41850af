"""Text through the same API: tables and folders, clear errors, packaged MiniLM, bundles, the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import headstart as hs
from headstart.data.texts import load_texts
from headstart.errors import DataError

POSITIVE = ["I love this, it is wonderful", "what a great and happy day", "this is excellent, thank you",
            "absolutely fantastic experience", "brilliant work, I am delighted", "so good, really enjoyed it",
            "superb quality and lovely people", "best purchase ever, very pleased"]
NEGATIVE = ["I hate this, it is awful", "what a terrible and sad day", "this is horrible, never again",
            "absolutely dreadful experience", "bad work, I am furious", "so poor, really disliked it",
            "awful quality and rude people", "worst purchase ever, very angry"]


def _write_csv(path, rows, header=("text", "label")):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture
def sentiment_csv(tmp_path):
    rows = [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]
    return _write_csv(tmp_path / "train.csv", rows)


def test_csv_jsonl_parquet_and_folder_agree(tmp_path, sentiment_csv):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]
    with open(tmp_path / "d.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [y for _, y in rows]}), tmp_path / "d.parquet")
    for i, (t, y) in enumerate(rows):
        os.makedirs(tmp_path / "folder" / y, exist_ok=True)
        (tmp_path / "folder" / y / f"{i}.txt").write_text(t)
    loaded = [load_texts(p) for p in (sentiment_csv, tmp_path / "d.jsonl", tmp_path / "d.parquet", tmp_path / "folder")]
    for data in loaded:
        assert data.classes == ["neg", "pos"] and sorted(data.items) == sorted(t for t, _ in rows)


def test_undecodable_and_empty_rows_are_counted_and_named(tmp_path):
    body = b"text,label\ngood text,a\n" + b"bad \xff\xfe bytes,b\n" + b",a\nfine again,b\nmore,a\n"
    path = tmp_path / "mixed.csv"
    path.write_bytes(body)
    data = load_texts(str(path))
    assert len(data) == 3
    assert [why for _, why in data.skipped] == ["undecodable bytes (not UTF-8)", "empty text"]
    assert data.skipped[0][0].endswith("mixed.csv:3")
    with pytest.raises(DataError, match="line 3: undecodable bytes"):
        load_texts(str(path), strict=True)


def test_table_errors_name_the_row_or_column(tmp_path):
    with pytest.raises(DataError, match="missing column 'text' \\(found: sentence, label\\)"):
        load_texts(_write_csv(tmp_path / "a.csv", [("hi", "x")], header=("sentence", "label")))
    with pytest.raises(DataError, match="line 3: missing label"):
        load_texts(_write_csv(tmp_path / "b.csv", [("hi", "x"), ("there", "NaN"), ("you", "y")]))
    (tmp_path / "c.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label":\n')
    with pytest.raises(DataError, match="c.jsonl, line 2: invalid JSON"):
        load_texts(str(tmp_path / "c.jsonl"))
    with pytest.raises(DataError, match="only one class"):
        load_texts(_write_csv(tmp_path / "d.csv", [("hi", "x"), ("there", "x")]))


def test_text_folder_skips_non_utf8_files(tmp_path):
    for c in ("a", "b"):
        os.makedirs(tmp_path / c)
        (tmp_path / c / "1.txt").write_text(f"text of {c}")
    (tmp_path / "a" / "2.txt").write_bytes(b"\xff\xfe\x00bad")
    data = load_texts(str(tmp_path))
    assert len(data) == 2 and data.skipped == [(str(tmp_path / "a" / "2.txt"), "not UTF-8 text")]


def test_packaged_minilm_transfers_sentiment(sentiment_csv, tmp_path):
    clf = hs.TextClassifier(strategy="features", head_epochs=80, lr=1e-2, val_fraction=0.25, verbose=False)
    clf.fit(sentiment_csv)
    tests = ["a wonderful, happy result", "a horrible, sad mess", "I am so pleased", "I am so angry"]
    assert clf.predict(tests) == ["pos", "neg", "pos", "neg"]
    reloaded = hs.load(clf.save(str(tmp_path / "t.hs")))
    assert isinstance(reloaded, hs.TextClassifier)
    assert np.array_equal(reloaded.predict_proba(tests), clf.predict_proba(tests))


@pytest.mark.parametrize("strategy", ["finetune", "two-stage"])
def test_fine_tuning_a_text_encoder_round_trips(sentiment_csv, tmp_path, strategy):
    clf = hs.TextClassifier(strategy=strategy, epochs=1, head_epochs=5, batch_size=8, verbose=False).fit(sentiment_csv)
    assert clf.backbone_trained_ or strategy == "two-stage"
    texts = POSITIVE[:3] + NEGATIVE[:3]
    reloaded = hs.load(clf.save(str(tmp_path / "t.hs")))
    assert np.array_equal(reloaded.predict_proba(texts), clf.predict_proba(texts))


def test_text_regression(tmp_path):
    rows = [(t, 1.0) for t in POSITIVE] + [(t, -1.0) for t in NEGATIVE]
    reg = hs.TextRegressor(head_epochs=80, lr=1e-2, verbose=False).fit(_write_csv(tmp_path / "r.csv", rows))
    good, bad = reg.predict(["a wonderful happy day", "a horrible sad day"])
    assert good > bad


def test_image_backbone_for_text_is_refused(sentiment_csv):
    with pytest.raises(hs.HeadstartError, match="is for images"):
        hs.TextClassifier(backbone="efficientnet_lite0", verbose=False).fit(sentiment_csv)


def test_cli_detects_text_and_predicts_raw_strings(sentiment_csv, tmp_path):
    cli = [sys.executable, "-m", "headstart.cli"]
    out = str(tmp_path / "run")
    fit = subprocess.run([*cli, "fit", sentiment_csv, "--out", out, "--head-epochs", "40", "--lr", "0.01",
                          "--quiet"], capture_output=True, text=True)
    assert fit.returncode == 0, fit.stderr
    config = hs.load(os.path.join(out, "model.hs"))._config()
    assert config["modality"] == "text" and config["backbone"]["name"] == "minilm_l6"
    pred = subprocess.run([*cli, "predict", os.path.join(out, "model.hs"), "a wonderful happy day", "--quiet"],
                          capture_output=True, text=True)
    assert pred.returncode == 0, pred.stderr
    assert pred.stdout.splitlines()[0].startswith("text,prediction")
    assert pred.stdout.splitlines()[1].split(",")[:2] == ["a wonderful happy day", "pos"]
    ev = subprocess.run([*cli, "evaluate", os.path.join(out, "model.hs"), sentiment_csv, "--json"],
                        capture_output=True, text=True)
    assert json.loads(ev.stdout)["n"] == 16


def test_lora_on_the_packaged_encoder_round_trips(sentiment_csv, tmp_path):
    # validating on the training texts: every LoRA epoch that fits them better counts as best, so it is kept
    clf = hs.TextClassifier(strategy="lora", epochs=2, head_epochs=3, lr=5e-3, batch_size=8, verbose=False)
    clf.fit(sentiment_csv, valid=sentiment_csv)
    assert clf.history_[-1]["stage"] == "lora" and clf.backbone_trained_
    texts = POSITIVE[:2] + NEGATIVE[:2]
    reloaded = hs.load(clf.save(str(tmp_path / "lora.hs")))
    assert np.array_equal(reloaded.predict_proba(texts), clf.predict_proba(texts))
    # only the attention projections moved: embeddings are the packaged ones
    fresh = hs.create_backbone("minilm_l6", modality="text").state_dict()
    tuned = clf.model_.backbone.state_dict()
    key = "body.model.embeddings.word_embeddings.weight"
    assert torch.equal(tuned[key], fresh[key])
    assert any(not torch.equal(tuned[k], fresh[k]) for k in tuned if k.endswith("attention.self.query.weight"))


def test_texts_run_longest_first_and_each_output_lands_on_its_own_row():
    from headstart.backbones import create_backbone, resolve_backbone
    from headstart.inference import run_over
    from headstart.modalities import MODALITIES

    texts = ["short", "a much longer text about a wonderful, happy day at the seaside with old friends", "",
             "a middling text here"]
    assert MODALITIES["text"].inference_order(texts) == [1, 3, 0, 2]
    backbone = create_backbone(resolve_backbone("minilm_l6", "text"))
    together, ok = run_over(backbone, texts, batch_size=2, verbose=False)  # the short text padded to the long one
    assert ok.tolist() == [True, True, False, True]
    for i in (0, 1, 3):
        alone, _ = run_over(backbone, [texts[i]], batch_size=1, verbose=False)
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5)
