"""`quality="best"`: the budget is spent on `setfit` where held-out rows show a gain, and left where they cannot."""

import time

import numpy as np
import pytest

import headstart as hs
from headstart.backbones import create_backbone
from headstart.budget import BLOCK_PASSES, MIN_CHECK_ROWS, PATIENCE, Labeled, budget_seconds, spend_on_setfit
from headstart.data import tweets
from headstart.data.labeled import stratified_split


@pytest.fixture(scope="module")
def tweet_rows(tmp_path_factory):
    """Real tweets, 40 per class (24 held out): (texts, class indices, classes), read as the estimator reads them."""
    train_csv, _, _ = tweets.export_split(str(tmp_path_factory.mktemp("tw")), per_class_train=40, test_size=30, seed=0)
    return hs.TextClassifier(verbose=False)._load(train_csv)


def _stand_in(data, **params) -> hs.TextClassifier:
    est = hs.TextClassifier(backbone="minilm_l6", quality="best", verbose=False, **params)
    est.classes_ = list(data.classes)
    return est


def _parts(data, held: int | None = None):
    train, val = stratified_split(data, 0.2, 0)
    val = val[:held] if held is not None else val
    return (Labeled([data.items[i] for i in train], data.targets[train]),
            Labeled([data.items[i] for i in val], data.targets[val]))


def _still_tuning(calls: list):
    """A tuning that leaves the weights as they are (so no check can improve) and records what it was asked."""
    def tune(model, items, targets, *, epochs, seed, deadline, log=None):
        calls.append({"epochs": epochs, "seed": seed, "rows": len(items)})
        return [{"stage": "setfit", "epoch": e + 1, "train_loss": 0.0} for e in range(epochs)]
    return tune


def test_best_stops_when_more_passes_do_not_improve_the_held_out_fit(tweet_rows):
    est, calls = _stand_in(tweet_rows, time_limit=600), []
    backbone = create_backbone("minilm_l6")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    tuning, held_out = _parts(tweet_rows)
    shipped, history, passes = spend_on_setfit(est, backbone, tuning, held_out, 4, time.perf_counter(), None,
                                               (_still_tuning(calls), lambda *a, **k: 1.0, None))
    # the fast plan, then PATIENCE blocks that did not beat it: the budget is left, and the weights are the best's
    assert [c["epochs"] for c in calls] == [4] + [BLOCK_PASSES] * PATIENCE
    assert [c["seed"] for c in calls] == [0, 4, 4 + BLOCK_PASSES]  # each block draws new batches
    assert passes == 4 and [r["epoch"] for r in history] == [1, 2, 3, 4] and shipped is backbone
    assert all(np.array_equal(v, before[k]) for k, v in shipped.state_dict().items())


def test_best_records_its_checks_and_why_it_stopped(tweet_rows):
    from headstart.advisor import Advice

    est, calls = _stand_in(tweet_rows, time_limit=600), []
    advice = Advice("setfit", {"epochs": 4}, [], {"setfit_seconds_estimate": 30.0})
    tuning, held_out = _parts(tweet_rows)
    spend_on_setfit(est, create_backbone("minilm_l6"), tuning, held_out, 4, time.perf_counter(), advice,
                    (_still_tuning(calls), lambda *a, **k: 1.0, None))
    budget = advice.measurements["budget"]
    assert budget["budget_s"] == 600 and budget["budget_from"] == "the time limit"
    assert [c["candidate"].split("(")[-1] for c in budget["checks"]] == ["fast plan)"] + ["more passes)"] * PATIENCE
    assert all(c["rows"] == len(held_out.targets) and 0 <= c["accuracy"] <= 1 for c in budget["checks"])
    assert f"{PATIENCE} blocks of {BLOCK_PASSES} passes in a row did not improve" in budget["stopped_by"]
    assert any("ships minilm_l6 after 4 passes" in line for line in advice.reasons)


def test_best_spends_nothing_it_cannot_afford_or_cannot_measure(tweet_rows):
    tuning, held_out = _parts(tweet_rows)
    est, calls = _stand_in(tweet_rows, time_limit=0.01), []  # past the deadline once the fast plan is done
    _, _, passes = spend_on_setfit(est, create_backbone("minilm_l6"), tuning, held_out, 4, time.perf_counter(),
                                   None, (_still_tuning(calls), lambda *a, **k: 1.0, None))
    assert passes == 4 and len(calls) == 1
    from headstart.advisor import Advice

    advice, calls = Advice("setfit"), []
    few = Labeled(held_out.items[: MIN_CHECK_ROWS - 1], held_out.targets[: MIN_CHECK_ROWS - 1])
    spend_on_setfit(_stand_in(tweet_rows, time_limit=600), create_backbone("minilm_l6"), tuning, few, 4,
                    time.perf_counter(), advice, (_still_tuning(calls), lambda *a, **k: 1.0, None))
    assert len(calls) == 1 and advice.measurements["budget"]["spent"] == "fast plan only"
    assert "cannot tell a better model from noise" in advice.reasons[-1]


def test_the_budget_is_the_time_limit_else_ten_times_the_fast_estimate():
    assert budget_seconds(hs.TextClassifier(time_limit=90), 12.0) == (90.0, "the time limit")
    assert budget_seconds(hs.TextClassifier(), 12.0)[0] == 120.0
    with pytest.raises(hs.HeadstartError, match="quality must be one of fast, best"):
        hs.TextClassifier(quality="slow").fit("unused.csv")


def test_auto_best_on_real_tweets_ships_a_tuned_encoder_that_reloads(tmp_path):
    train_csv, test_csv, _ = tweets.export_split(str(tmp_path / "tw"), per_class_train=40, test_size=90, seed=0)
    clf = hs.TextClassifier(backbone="minilm_l6", quality="best", time_limit=75, verbose=False).fit(train_csv)
    said = " ".join(clf.advice_.reasons)
    assert "quality best: a budget of 75 s (the time limit)" in said and "-> ships minilm_l6 after" in said
    budget = clf.advice_.measurements["budget"]
    assert budget["checks"][0]["candidate"].endswith("(fast plan)") and budget["stopped_by"]
    best = max(budget["checks"], key=lambda c: c["log_likelihood"])  # what the tuning kept, then raced as usual
    passes = int(best["candidate"].split(", ")[1].split()[0])
    candidates = clf.advice_.measurements["candidates"]
    assert candidates[0]["candidate"] == "transfer (setfit on minilm_l6)" and len(candidates) >= 3
    if clf.strategy_["name"] == "setfit":  # the tuned encoder won the race: its records are the kept passes
        assert clf.strategy_["stages"][0]["epochs"] == passes
        assert [r["epoch"] for r in clf.history_ if r["stage"] == "setfit"] == list(range(1, passes + 1))
    assert clf.metrics_["fit_seconds"] < 75 * 1.3  # the budget is kept (tuning stops at 85% of it)
    assert clf.evaluate(test_csv)["accuracy"] > 0.45  # 3 classes: chance is 1/3
    texts = ["what a great day", "this is awful"]
    assert np.allclose(hs.load(clf.save(str(tmp_path / "b.hs"))).predict_proba(texts), clf.predict_proba(texts),
                       atol=1e-5)
