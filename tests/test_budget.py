"""`quality="best"`: the budget is spent on `setfit` where held-out rows show a gain, and left where they cannot."""

import time

import numpy as np
import pytest
import torch

import headstart as hs
from headstart.backbones import create_backbone
from headstart.budget import (
    BLOCK_PASSES,
    MIN_CHECK_ROWS,
    PATIENCE,
    Labeled,
    Tools,
    budget_seconds,
    spend_on_setfit,
)
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
                                               Tools(_still_tuning(calls), lambda *a, **k: 1.0))
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
                    Tools(_still_tuning(calls), lambda *a, **k: 1.0))
    budget = advice.measurements["budget"]
    assert budget["budget_s"] == 600 and budget["budget_from"] == "the time limit"
    assert [c["candidate"].split("(")[-1] for c in budget["checks"]] == ["fast plan)"] + ["more passes)"] * PATIENCE
    assert all(c["rows"] == len(held_out.targets) and 0 <= c["accuracy"] <= 1 for c in budget["checks"])
    assert f"{PATIENCE} blocks of {BLOCK_PASSES} passes in a row did not improve" in budget["stopped_by"]
    assert any("ships minilm_l6 tuned by SetFit's tuning, 4 passes" in line for line in advice.reasons)


def test_best_spends_nothing_it_cannot_afford_or_cannot_measure(tweet_rows):
    tuning, held_out = _parts(tweet_rows)
    est, calls = _stand_in(tweet_rows, time_limit=0.01), []  # past the deadline once the fast plan is done
    _, _, passes = spend_on_setfit(est, create_backbone("minilm_l6"), tuning, held_out, 4, time.perf_counter(),
                                   None, Tools(_still_tuning(calls), lambda *a, **k: 1.0))
    assert passes == 4 and len(calls) == 1
    from headstart.advisor import Advice

    advice, calls = Advice("setfit"), []
    few = Labeled(held_out.items[: MIN_CHECK_ROWS - 1], held_out.targets[: MIN_CHECK_ROWS - 1])
    spend_on_setfit(_stand_in(tweet_rows, time_limit=600), create_backbone("minilm_l6"), tuning, few, 4,
                    time.perf_counter(), advice, Tools(_still_tuning(calls), lambda *a, **k: 1.0))
    assert len(calls) == 1 and advice.measurements["budget"]["spent"] == "fast plan only"
    assert "cannot tell a better model from noise" in advice.reasons[-1]


def _spoiling_tuning(calls: list):
    """A tuning that adds noise to every weight (a held-out fit far below the pretrained encoder's)."""
    def tune(model, items, targets, *, epochs, seed, deadline, log=None):
        calls.append({"epochs": epochs})
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        return [{"stage": "setfit", "epoch": e + 1, "train_loss": 0.0} for e in range(epochs)]
    return tune


def test_best_races_the_trainers_recipe_from_the_untuned_weights(tweet_rows):
    est, calls, tuned = _stand_in(tweet_rows, time_limit=600, epochs=3), [], []
    backbone = create_backbone("minilm_l6")
    pretrained = {k: v.clone() for k, v in backbone.state_dict().items()}

    def finetune(model, items, targets, *, epochs, seed, deadline, log=None):  # leaves the weights as they were
        tuned.append({"epochs": epochs, "pretrained": all(torch.equal(v, pretrained[k])
                                                            for k, v in model.state_dict().items())})
        return [{"stage": "finetune", "epoch": e + 1, "train_loss": 0.0} for e in range(epochs)]

    from headstart.advisor import Advice

    advice = Advice("setfit", {"epochs": 4}, [], {"setfit_seconds_estimate": 30.0})
    tuning, held_out = _parts(tweet_rows)
    shipped, history, passes = spend_on_setfit(est, backbone, tuning, held_out, 4, time.perf_counter(), advice,
                                               Tools(_spoiling_tuning(calls), lambda *a, **k: 1.0, None, finetune))
    # it starts from the weights before SetFit's tuning spoiled them, and wins on the held-out rows
    assert tuned == [{"epochs": 3, "pretrained": True}] and calls == [{"epochs": 4}]
    assert shipped is not backbone and passes == 3 and [r["stage"] for r in history] == ["finetune"] * 3
    assert all(torch.equal(v, pretrained[k]) for k, v in shipped.state_dict().items())
    checks = advice.measurements["budget"]["checks"]
    assert [c["candidate"] for c in checks] == ["setfit on minilm_l6, 4 passes (fast plan)",
                                                "fine-tune on minilm_l6, 3 passes (the Trainer's recipe)"]
    assert checks[1]["log_likelihood"] > checks[0]["log_likelihood"]
    assert "runs its own epochs only" in advice.measurements["budget"]["stopped_by"]  # no SetFit passes after it


def test_best_tries_the_trainers_recipe_only_under_auto_and_where_it_fits(tweet_rows):
    tuning, held_out = _parts(tweet_rows)
    tried = []

    def finetune(model, items, targets, *, epochs, seed, deadline, log=None):
        tried.append(epochs)
        return []

    def slow_still(calls):  # 50 ms a pass: the recipe's 1,000 epochs would take about a minute
        still = _still_tuning(calls)
        return lambda *a, **k: (time.sleep(0.05 * k["epochs"]), still(*a, **k))[1]

    explicit = _stand_in(tweet_rows, time_limit=600, strategy="setfit")
    spend_on_setfit(explicit, create_backbone("minilm_l6"), tuning, held_out, 4, time.perf_counter(), None,
                    Tools(_still_tuning([]), lambda *a, **k: 1.0, None, finetune))
    assert tried == []  # the user asked for SetFit: its budget buys SetFit passes only
    from headstart.advisor import Advice

    advice = Advice("setfit")
    spend_on_setfit(_stand_in(tweet_rows, time_limit=40, epochs=1000), create_backbone("minilm_l6"), tuning,
                    held_out, 4, time.perf_counter(), advice, Tools(slow_still([]), lambda *a, **k: 1.0, None,
                                                                    finetune))
    assert tried == [] and any(line.startswith("the Trainer's recipe (1000 epochs): about") and
                               line.endswith("not tried") for line in advice.reasons)


def test_the_budget_is_the_time_limit_else_ten_times_the_fast_estimate():
    assert budget_seconds(hs.TextClassifier(time_limit=90), 12.0) == (90.0, "the time limit")
    assert budget_seconds(hs.TextClassifier(), 12.0)[0] == 120.0
    with pytest.raises(hs.HeadstartError, match="quality must be one of fast, best"):
        hs.TextClassifier(quality="slow").fit("unused.csv")


def test_auto_best_on_real_tweets_ships_a_tuned_encoder_that_reloads(tmp_path):
    train_csv, test_csv, _ = tweets.export_split(str(tmp_path / "tw"), per_class_train=40, test_size=90, seed=0)
    clf = hs.TextClassifier(backbone="minilm_l6", quality="best", time_limit=75, verbose=False).fit(train_csv)
    said = " ".join(clf.advice_.reasons)
    assert "quality best: a budget of 75 s (the time limit)" in said and "-> ships minilm_l6 tuned by" in said
    budget = clf.advice_.measurements["budget"]
    assert budget["checks"][0]["candidate"].endswith("(fast plan)") and budget["stopped_by"]
    best = max(budget["checks"], key=lambda c: c["log_likelihood"])  # what the tuning kept, then raced as usual
    passes = int(best["candidate"].split(", ")[1].split()[0])
    candidates = clf.advice_.measurements["candidates"]
    assert candidates[0]["candidate"] == "transfer (setfit on minilm_l6)" and len(candidates) >= 3
    if clf.strategy_["name"] == "setfit":  # the tuned encoder won the race: its records are the kept passes
        tuned_by = clf.strategy_["stages"][0]
        assert tuned_by["epochs"] == passes and tuned_by["name"] == ("setfit" if best["candidate"].startswith(
            "setfit") else "finetune")
        assert [r["epoch"] for r in clf.history_ if r["stage"] == tuned_by["name"]] == list(range(1, passes + 1))
    assert clf.metrics_["fit_seconds"] < 75 * 1.3  # the budget is kept (tuning stops at 85% of it)
    assert clf.evaluate(test_csv)["accuracy"] > 0.45  # 3 classes: chance is 1/3
    texts = ["what a great day", "this is awful"]
    assert np.allclose(hs.load(clf.save(str(tmp_path / "b.hs"))).predict_proba(texts), clf.predict_proba(texts),
                       atol=1e-5)
