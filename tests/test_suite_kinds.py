"""The suite's regression / multi-label pieces that need no data or model: splits, label sets, the report's paired
differences (they must equal the metric differences scikit-learn computes)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score, r2_score
from sklearn.preprocessing import MultiLabelBinarizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
suite_tasks = pytest.importorskip("suite_tasks")
suite_report_kinds = pytest.importorskip("suite_report_kinds")


def test_rows_split_is_nested_and_disjoint() -> None:
    small, test_small = suite_tasks.draw_rows(1000, 100, seed=3, test_size=200)
    big, test_big = suite_tasks.draw_rows(1000, 500, seed=3, test_size=200)
    assert set(small) <= set(big)
    assert not set(small) & set(test_small) and not set(big) & set(test_big)
    assert len(test_small) == len(test_big) == 200


def test_tags_are_independent_facts() -> None:
    assert suite_tasks.tags("Dresses", "General Petite", 1) == "Dresses;petite;recommended"
    assert suite_tasks.tags("Tops", "General", 0) == "Tops"
    assert suite_tasks.tags("Trend", "General", 1) is None and suite_tasks.tags(None, None, 1) is None


def _row(subset: int, predicted: list, truth: list, strategy: str, kind: str, metric: float) -> dict:
    return {"task": "t", "kind": kind, "train_size": 10, "subset": subset, "strategy": strategy, "fit_s": 1.0,
            suite_report_kinds.METRICS[kind]: metric, **{m: metric for m in suite_report_kinds.REPORTED[kind]},
            "test_predictions": {"truth": truth, "predicted": predicted}}


def test_r2_difference_is_exact() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    a, b = y + rng.normal(scale=0.5, size=200), y + rng.normal(scale=0.8, size=200)
    d = suite_report_kinds.paired_difference("regression", _row(0, a.tolist(), y.tolist(), "x", "regression", 0),
                                             _row(0, b.tolist(), y.tolist(), "y", "regression", 0))
    assert d["difference"] == pytest.approx(r2_score(y, a) - r2_score(y, b))
    assert 0 < d["standard_error"] < abs(d["difference"])


def test_micro_f1_difference_matches_sklearn() -> None:
    truth = ["a;b", "a", "b;c", "c", "a;c"] * 20
    a = ["a;b", "a", "b", "c", "a"] * 20
    b = ["a", "b", "b;c", "", "a;c"] * 20
    d = suite_report_kinds.paired_difference("multilabel", _row(0, a, truth, "x", "multilabel", 0),
                                             _row(0, b, truth, "y", "multilabel", 0))
    mlb = MultiLabelBinarizer().fit([s.split(";") for s in truth])

    def micro(p: list[str]) -> float:
        return f1_score(mlb.transform([s.split(";") for s in truth]),
                        mlb.transform([[x for x in s.split(";") if x] for s in p]), average="micro")

    assert d["difference"] == pytest.approx(micro(a) - micro(b))
    assert d["standard_error"] > 0


def test_aggregate_compares_on_shared_subsets() -> None:
    y = np.linspace(1, 5, 50)
    rows = [_row(s, (y + 0.1 * (s + 1)).tolist(), y.tolist(), strategy, "regression", 0.5)
            for s in (0, 1) for strategy in ("features", "sklearn-cv", "auto", "baseline")]
    entry = suite_report_kinds.aggregate(rows)[0]
    assert entry["features_minus_sklearn-cv"]["difference"] == pytest.approx(0.0)
    assert entry["auto_minus_baseline"]["verdict"] == "within noise"
    assert entry["strategies"]["features"]["subsets"] == 2


def test_estimates_table_counts_what_lands_within_2x() -> None:
    suite_report = pytest.importorskip("suite_report")
    cands = [{"candidate": "transfer", "estimate_s": 10.0, "seconds": 19.0},  # 1.9x: within
             {"candidate": "no transfer", "estimate_s": 2.0, "seconds": 0.5}]  # 0.25x: outside
    rows = [{"task": "tweets", "per_class": 8, "subset": 0, "strategy": "auto", "code": "c1",
             "measurements": {"candidates": cands}},
            {"task": "tweets", "per_class": 8, "subset": 1, "strategy": "auto", "code": "old",
             "measurements": {"candidates": cands}},  # another code version: not counted
            {"task": "tweets", "per_class": 8, "subset": 0, "strategy": "features", "code": "c1"}]
    table = suite_report.estimates(rows, "c1")
    assert table["tweets"]["candidates"] == 2 and table["tweets"]["within"] == 1
    assert table["tweets"]["max_ratio"] == 1.9 and table["tweets"]["min_ratio"] == 0.25
    assert [c["candidate"] for c in table["tweets"]["outside"]] == ["no transfer"]
