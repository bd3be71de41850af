"""The suite's numbers for its regression and multi-label tasks (bench/suite_tasks.py): per (task, training rows)
each strategy's means over subsets, and the two comparisons the issue sets as targets, in the task's metric (R^2 for
regression, micro-F1 for multi-label):

- `features - sklearn-cv`: headstart's solved head on frozen MiniLM features against scikit-learn's cross-validated
  estimator on the same features (target: within noise);
- `auto - baseline`: what auto ships against the no-transfer model (target: never below by more than noise);
- `auto - hf-trainer`: against MiniLM fine-tuned by the Hugging Face Trainer at its defaults (reported; the
  Trainer's fit time is in the table beside it).

Noise: both strategies of a comparison predicted the same test rows of the same split, so each subset's difference
is paired row by row. R^2 differences are exact means of per-row squared-error differences over the test targets'
variance, so their standard error is the usual one; micro-F1 is not a mean over rows, so its standard error is a
paired bootstrap over test rows. Subsets' test rows are drawn independently, so the mean difference over k subsets
has standard error sqrt(sum se_i^2) / k. "Within noise" means |difference| <= 1.96 standard errors. This is the
noise of the test sample only; the spread over training subsets is shown beside it (`subset_differences`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

METRICS = {"classification": "accuracy", "regression": "r2", "multilabel": "micro_f1"}
SECOND = {"classification": "macro_f1", "regression": "mae", "multilabel": "macro_f1"}
REPORTED = {"regression": ("r2", "mae", "rmse"), "multilabel": ("micro_f1", "macro_f1", "exact_match")}
COMPARISONS = (("features", "sklearn-cv"), ("auto", "baseline"), ("auto", "hf-trainer"))
BOOTSTRAP = 1000
Z = 1.96


def _r2_difference(truth: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """R^2(a) - R^2(b) on the same rows, and its standard error: (SSE_b - SSE_a) / SST is the mean over rows of
    ((b_i - y_i)^2 - (a_i - y_i)^2) / var(y)."""
    d = ((b - truth) ** 2 - (a - truth) ** 2) / truth.var()
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def _counts(truth: list[str], predicted: list[str]) -> np.ndarray:
    """Per test row: true positives, false positives, false negatives over its labels."""
    out = np.zeros((len(truth), 3))
    for i, (t, p) in enumerate(zip(truth, predicted)):
        ts, ps = {x for x in t.split(";") if x}, {x for x in p.split(";") if x}
        out[i] = len(ts & ps), len(ps - ts), len(ts - ps)
    return out


def _micro_f1(c: np.ndarray) -> np.ndarray:
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1e-12), 0.0)


def _micro_f1_difference(truth: list[str], a: list[str], b: list[str], seed: int) -> tuple[float, float]:
    """micro-F1(a) - micro-F1(b) and its paired bootstrap standard error (the same resampled rows for both)."""
    ca, cb = _counts(truth, a), _counts(truth, b)
    idx = np.random.default_rng(seed).integers(0, len(truth), size=(BOOTSTRAP, len(truth)))
    boot = _micro_f1(ca[idx].sum(1)) - _micro_f1(cb[idx].sum(1))
    return float(_micro_f1(ca.sum(0)) - _micro_f1(cb.sum(0))), float(boot.std(ddof=1))


def paired_difference(kind: str, a: dict, b: dict, seed: int = 0) -> dict | None:
    """One split's difference a - b in the kind's metric with its test-row standard error; None where the two rows
    lack predictions or did not predict the same test rows."""
    pa, pb = a.get("test_predictions"), b.get("test_predictions")
    if not pa or not pb or pa["truth"] != pb["truth"] or len(pa["truth"]) < 2:
        return None
    if kind == "regression":
        diff, se = _r2_difference(np.asarray(pa["truth"], dtype=float), np.asarray(pa["predicted"], dtype=float),
                                  np.asarray(pb["predicted"], dtype=float))
    else:
        diff, se = _micro_f1_difference(pa["truth"], pa["predicted"], pb["predicted"], seed)
    return {"difference": diff, "standard_error": se}


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def _verdict(first: str, diff: float, se: float) -> str:
    if abs(diff) <= Z * se:
        return "within noise"
    if first == "auto":
        return "above" if diff > 0 else "BELOW"
    return "better" if diff > 0 else "WORSE"


def aggregate(rows: list[dict]) -> list[dict]:
    """Per (task, training rows): each strategy's mean metrics and fit time over subsets, the two comparisons."""
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        kind = r.get("kind", "classification")
        if kind in REPORTED and METRICS[kind] in r:
            groups[(r["task"], kind, r["train_size"])][r["strategy"]].append(r)
    out = []
    for (task, kind, n), by in sorted(groups.items()):
        means = {s: {**{m: _mean([r[m] for r in rs]) for m in REPORTED[kind]},
                     "fit_s": _mean([r["fit_s"] for r in rs]), "subsets": len(rs)} for s, rs in by.items()}
        entry = {"task": task, "kind": kind, "train_size": n, "metric": METRICS[kind], "strategies": means}
        anchors = {r["anchor"]["estimator"] for s in ("sklearn-cv", "hf-trainer") for r in by.get(s, [])
                   if r.get("anchor")}
        if anchors:
            entry["anchor"] = sorted(anchors)
        if "auto" in by:
            entry["auto_choices"] = dict(Counter(f"{r.get('chosen')}->{r.get('shipped')}" for r in by["auto"]))
        for first, second in COMPARISONS:
            pairs = {r["subset"]: r for r in by.get(second, [])}
            per_subset = [(r["subset"], paired_difference(kind, r, pairs[r["subset"]], seed=r["subset"]))
                          for r in by.get(first, []) if r["subset"] in pairs]
            per_subset = [(s, d) for s, d in per_subset if d is not None]
            if not per_subset:
                continue
            k = len(per_subset)
            diff = float(np.mean([d["difference"] for _, d in per_subset]))
            se = math.sqrt(sum(d["standard_error"] ** 2 for _, d in per_subset)) / k
            entry[f"{first}_minus_{second}"] = {
                "difference": diff, "standard_error": se, "subsets": k, "verdict": _verdict(first, diff, se),
                "subset_differences": {str(s): round(d["difference"], 4) for s, d in per_subset}}
        out.append(entry)
    return out


# The Trainer's fits run no headstart code (the packaged MiniLM folder aside): where the measured headstart version
# has no such row for a split, the latest one from another version is used, and the summary says how many.
CODE_FREE = ("hf-trainer",)


def summarize(rows: list[dict], code: str | None = None) -> dict:
    """The regression / multi-label rows of one code version (`code`; default: the last row's), with the CODE_FREE
    anchors' rows from any version where this one lacks them."""
    if code is None and rows:
        code = rows[-1].get("code")
    kinds = [r for r in rows if r.get("kind", "classification") in REPORTED]
    mine = [r for r in kinds if r.get("code") == code]
    have = {(r["task"], r["train_size"], r["subset"], r.get("test_size"), r["strategy"]) for r in mine}
    borrowed = {}
    for r in kinds:  # later rows win
        key = (r["task"], r["train_size"], r["subset"], r.get("test_size"), r["strategy"])
        if r["strategy"] in CODE_FREE and r.get("code") != code and key not in have and "error" not in r:
            borrowed[key] = r
    mine += list(borrowed.values())
    return {"code": code, "rows_used": len(mine), "rows_from_other_code": len(borrowed),
            "errors": [f"{r['task']} {r['train_size']} rows subset {r['subset']} {r['strategy']}"
                       for r in mine if "error" in r],
            "aggregate": aggregate(mine)}


def _diff(c: dict | None) -> str:
    if c is None:
        return "-"
    return f"{c['difference']:+.3f} ± {Z * c['standard_error']:.3f} ({c['verdict']})"


def markdown(summary: dict) -> str:
    agg = summary["aggregate"]
    if not agg:
        return "(no regression or multi-label rows)"
    lines = []
    for kind in ("regression", "multilabel"):
        mine = [e for e in agg if e["kind"] == kind]
        if not mine:
            continue
        metric, second = METRICS[kind], SECOND[kind]
        strategies = list(dict.fromkeys(s for e in mine for s in e["strategies"]))
        lines += [f"### {kind}: test {metric} ({second}), mean over subsets (headstart {summary['code']})", "",
                  "| task | train rows | " + " | ".join(strategies) + " | features - sklearn-cv | auto - baseline | "
                  "auto - hf-trainer | auto chose->shipped |",
                  "|---|---:|" + "---:|" * len(strategies) + "---:|---:|---:|---|"]
        for e in mine:
            cells = [f"{m[metric]:.3f} ({m[second]:.3f}) ×{m['subsets']}" if (m := e["strategies"].get(s)) else "-"
                     for s in strategies]
            choices = ", ".join(f"{k} x{v}" for k, v in e.get("auto_choices", {}).items()) or "-"
            lines.append(f"| {e['task']} | {e['train_size']} | " + " | ".join(cells) + " | "
                         f"{_diff(e.get('features_minus_sklearn-cv'))} | {_diff(e.get('auto_minus_baseline'))} | "
                         f"{_diff(e.get('auto_minus_hf-trainer'))} | {choices} |")
        times = {s: _mean([e["strategies"][s]["fit_s"] for e in mine if s in e["strategies"]]) for s in strategies}
        lines.append("\nMean fit seconds: " + ", ".join(f"{s} {t:.1f}" for s, t in times.items()))
        anchors = sorted({a for e in mine for a in e.get("anchor", [])})
        if anchors:
            lines.append(f"Anchors: {'; '.join(anchors)} (scikit-learn on hs.Embedder(backbone=\"minilm_l6\") "
                         "features; the Trainer fine-tunes the same packaged MiniLM).")
        lines.append("")
    lines.append(f"×n = subsets averaged. Differences in the task's metric: mean over subsets ± {Z} standard errors "
                 "of the paired test-row noise.")
    if summary.get("rows_from_other_code"):
        lines.append(f"{summary['rows_from_other_code']} {'/'.join(CODE_FREE)} rows come from a run at another "
                     "headstart version (they run no headstart code).")
    if summary["errors"]:
        lines.append(f"Failed fits ({len(summary['errors'])}): " + "; ".join(summary["errors"][:10]))
    return "\n".join(lines)
