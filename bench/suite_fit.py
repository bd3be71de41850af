"""One fit of a regression or multi-label suite task, inside bench/suite.py's child process: headstart's strategies
(`auto`, `features`, `baseline`, ...) or the scikit-learn anchor `sklearn-cv`, then the test metrics and the test
predictions themselves (the report pairs two strategies' predictions row by row to measure the comparison's noise).

`sklearn-cv` is what a scikit-learn user would run on the same frozen features: `hs.Embedder(backbone="minilm_l6")`,
then the cross-validated estimator of the task as scikit-learn's user guide shows it, arguments in ANCHORS (and in
every row it writes).

`hf-trainer` is what a Hugging Face user would run: the packaged all-MiniLM-L6-v2 checkpoint loaded with
`AutoModelForSequenceClassification` and `problem_type="regression"` (num_labels=1, float targets) or
`"multi_label_classification"` (float multi-hot targets; a label is predicted where its sigmoid >= 0.5), as the
transformers docs show, trained by `Trainer` at its defaults (lr 5e-5, batch 8, 3 epochs, linear decay), texts
tokenized with truncation at the model's own maximum length.
"""

from __future__ import annotations

import csv
import time
import warnings

import numpy as np

SEPARATOR = ";"
# The exact estimators, as written in the results. RidgeCV: the user guide's example grid (linear_model.rst,
# "Setting the regularization parameter: leave-one-out Cross-Validation"), leave-one-out (cv=None, the default).
# LogisticRegressionCV: every default (Cs=10, 5-fold stratified, lbfgs, max_iter=100), one per label.
ANCHORS = {"regression": "RidgeCV(alphas=np.logspace(-6, 6, 13))",
           "multilabel": "OneVsRestClassifier(LogisticRegressionCV())"}
KIND_STRATEGIES = ("auto", "features", "baseline", "sklearn-cv", "hf-trainer")
TRAINER = {"regression": 'AutoModelForSequenceClassification(problem_type="regression", num_labels=1), '
                         "Trainer defaults",
           "multilabel": 'AutoModelForSequenceClassification(problem_type="multi_label_classification"), '
                         "Trainer defaults"}


def read_rows(path: str) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def _sets(labels: list[str]) -> list[list[str]]:
    return [sorted(x for x in str(s).split(SEPARATOR) if x) for s in labels]


def anchor_estimator(kind: str):
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.multiclass import OneVsRestClassifier

    if kind == "regression":
        return RidgeCV(alphas=np.logspace(-6, 6, 13))
    return OneVsRestClassifier(LogisticRegressionCV())


def fit_anchor(kind: str, texts: list[str], labels: list[str], cache: str) -> tuple[object, dict]:
    """Frozen MiniLM features (headstart's Embedder, the same backbone and cache path `features` uses) and the
    scikit-learn estimator on them; returns (a predict function over texts, what it chose)."""
    from sklearn.preprocessing import MultiLabelBinarizer

    import headstart as hs

    embedder = hs.Embedder(backbone="minilm_l6", cache_dir=cache).fit(texts)
    x = embedder.transform(texts)
    model = anchor_estimator(kind)
    with warnings.catch_warnings(record=True) as caught:  # counted, not hidden: defaults may not converge
        warnings.simplefilter("always")
        if kind == "regression":
            model.fit(x, np.asarray(labels, dtype=np.float64))
            chosen = {"alpha": float(model.alpha_)}
        else:
            binarizer = MultiLabelBinarizer().fit(_sets(labels))
            model.fit(x, binarizer.transform(_sets(labels)))
            chosen = {"C": {c: float(np.ravel(getattr(e, "C_", [np.nan]))[0])
                            for c, e in zip(binarizer.classes_, model.estimators_)}}
    chosen["warnings"] = dict(sorted({w.category.__name__: sum(1 for v in caught if v.category is w.category)
                                      for w in caught}.items()))

    def predict(items: list[str]) -> list:
        out = model.predict(embedder.transform(items))
        if kind == "regression":
            return [float(v) for v in out]
        return [list(s) for s in binarizer.inverse_transform(np.asarray(out))]

    return predict, {"estimator": ANCHORS[kind], "features": 'hs.Embedder(backbone="minilm_l6")', **chosen}


def fit_trainer(kind: str, texts: list[str], labels: list[str], seed: int) -> tuple[object, dict]:
    """Fine-tune MiniLM with the Hugging Face Trainer at its defaults; returns (a predict function, what ran)."""
    import tempfile

    import torch
    from sklearn.preprocessing import MultiLabelBinarizer
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from headstart.backbones.text import packaged_minilm_path

    path = packaged_minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    if kind == "regression":
        targets = [float(v) for v in labels]
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, problem_type="regression",
                                                                   use_safetensors=True)
    else:
        binarizer = MultiLabelBinarizer().fit(_sets(labels))
        targets = binarizer.transform(_sets(labels)).astype(np.float32).tolist()
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(binarizer.classes_), problem_type="multi_label_classification",
            use_safetensors=True)

    def encode(items: list[str]) -> list[dict]:  # a list of examples is a dataset to the Trainer; no `datasets`
        enc = tok(items, truncation=True)
        return [{k: v[i] for k, v in enc.items()} for i in range(len(items))]

    train = [{**row, "label": t} for row, t in zip(encode(texts), targets)]
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="hf-"), seed=seed, save_strategy="no",
                             report_to="none", disable_tqdm=True, logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tok))
    trainer.train()

    def predict(items: list[str]) -> list:
        out = np.asarray(trainer.predict(encode(items)).predictions)
        if kind == "regression":
            return [float(v) for v in out.reshape(-1)]
        on = torch.sigmoid(torch.as_tensor(out)).numpy() >= 0.5
        return [list(s) for s in binarizer.inverse_transform(on.astype(int))]

    return predict, {"estimator": TRAINER[kind], "epochs": args.num_train_epochs, "lr": args.learning_rate,
                     "batch": args.per_device_train_batch_size}


def scores(kind: str, truth: list[str], preds: list) -> dict:
    """r2 / mae / rmse (regression) or micro-F1 / macro-F1 / exact match over every label in the test truth or the
    predictions (multi-label); a true label never predicted counts as F1 0 in the macro mean."""
    from sklearn import metrics as skm
    from sklearn.preprocessing import MultiLabelBinarizer

    if kind == "regression":
        y, p = np.asarray(truth, dtype=np.float64), np.asarray(preds, dtype=np.float64)
        return {"r2": float(skm.r2_score(y, p)), "mae": float(skm.mean_absolute_error(y, p)),
                "rmse": float(np.sqrt(skm.mean_squared_error(y, p)))}
    sets = _sets(truth)
    binarizer = MultiLabelBinarizer().fit(sets + [list(s) for s in preds])
    y, p = binarizer.transform(sets), binarizer.transform([list(s) for s in preds])
    return {"micro_f1": float(skm.f1_score(y, p, average="micro", zero_division=0)),
            "macro_f1": float(skm.f1_score(y, p, average="macro", zero_division=0)),
            "exact_match": float(skm.accuracy_score(y, p))}


def child_fit(job: dict, cache: str) -> dict:
    """Fit job["strategy"] on job["train"], predict job["test"]; the row's measurements (suite.py adds the key)."""
    import headstart as hs

    kind = job["kind"]
    texts, labels = read_rows(job["train"])
    test_texts, truth = read_rows(job["test"])
    out: dict = {}
    started = time.perf_counter()
    if job["strategy"] == "sklearn-cv":
        predict, out["anchor"] = fit_anchor(kind, texts, labels, cache)
        fit_s = time.perf_counter() - started
    elif job["strategy"] == "hf-trainer":
        predict, out["anchor"] = fit_trainer(kind, texts, labels, job["subset"])
        fit_s = time.perf_counter() - started
    else:
        est = (hs.TextRegressor(strategy=job["strategy"], epochs=job["epochs"], seed=job["subset"], verbose=False,
                                cache_dir=cache) if kind == "regression" else
               hs.TextClassifier(task="multilabel", strategy=job["strategy"], epochs=job["epochs"],
                                 seed=job["subset"], verbose=False, cache_dir=cache))
        est.fit(job["train"])
        fit_s = time.perf_counter() - started
        predict = est.predict
        out["shipped"] = (est.strategy_ or {}).get("name")
        if est.advice_ is not None:
            out.update(chosen=est.advice_.strategy, reasons=list(est.advice_.reasons),
                       measurements=est.advice_.measurements)
        if est.metrics_ and est.metrics_.get("validation"):
            out["validation"] = {k: v for k, v in est.metrics_["validation"].items() if isinstance(v, (int, float))}
    started = time.perf_counter()
    preds = predict(test_texts)
    predict_s = time.perf_counter() - started
    if any(p is None for p in preds):
        raise RuntimeError(f"{sum(p is None for p in preds)} test texts unreadable")
    written = ([round(float(p), 4) for p in preds] if kind == "regression"
               else [SEPARATOR.join(sorted(p)) for p in preds])
    return {**scores(kind, truth, preds), "n_test": len(truth), "fit_s": fit_s, "predict_s": predict_s, **out,
            "test_predictions": {"truth": truth, "predicted": written}}
