"""The suite's numbers from its rows (bench/suite.py): per (task, size) aggregates, and leave-one-dataset-out checks
of `auto`'s decision rules.

Leave-one-dataset-out, the hook: a `ThresholdRule` maps the measurements recorded on one of auto's runs to one
number (`feature`), and decides "switch" when that number is above a threshold, "keep" otherwise; `outcomes` says
what test accuracy each decision would have shipped on that run. For each data set (a source: the three Fashion-MNIST
tasks are one data set, the two clothing-review tasks another), the threshold is fitted on the other data sets' runs
(the grid value with the least mean regret; ties go to the value nearest the one in use) and the held-out data
set's regret is reported at the fitted threshold and at the one in use. A new rule is one more entry in RULES.

Regret of a decision on a run: the best explicit strategy's test accuracy on that same split minus the accuracy of
what the decision ships, in points.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def splits(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """(task, per_class, subset) -> strategy -> its finished row."""
    out: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if "accuracy" in r:
            out[(r["task"], r["per_class"], r["subset"])][r["strategy"]] = r
    return out


def aggregate(rows: list[dict]) -> list[dict]:
    """Per (task, size): each strategy's mean test accuracy, macro-F1 and fit time over subsets; auto's regret against
    the best explicit strategy's mean, its gap to the baseline's mean (points), and auto's mean fit time over the sum
    of the explicit strategies' mean fit times (what trying every candidate run here would cost)."""
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if "accuracy" in r:
            groups[(r["task"], r["per_class"])][r["strategy"]].append(r)
    out = []
    for (task, n), by in sorted(groups.items()):
        means = {s: {"accuracy": _mean([r["accuracy"] for r in rs]), "macro_f1": _mean([r["macro_f1"] for r in rs]),
                     "fit_s": _mean([r["fit_s"] for r in rs]), "subsets": len(rs)} for s, rs in by.items()}
        explicit = {s: m for s, m in means.items() if s != "auto"}
        entry = {"task": task, "per_class": n, "strategies": means}
        if explicit:
            best = max(explicit, key=lambda s: explicit[s]["accuracy"])
            entry.update(best=best, best_accuracy=explicit[best]["accuracy"])
        if "auto" in means:
            auto = means["auto"]
            entry["auto_choices"] = dict(Counter(f"{r.get('chosen')}->{r.get('shipped')}" for r in by["auto"]))
            if explicit:
                entry["regret_points"] = 100 * (explicit[best]["accuracy"] - auto["accuracy"])
                entry["time_fraction"] = auto["fit_s"] / sum(m["fit_s"] for m in explicit.values())
                entry["time_fraction_of"] = sorted(explicit)
            if "baseline" in means:
                entry["vs_baseline_points"] = 100 * (auto["accuracy"] - means["baseline"]["accuracy"])
        out.append(entry)
    return out


# ---------------------------------------------------------------- leave one data set out

@dataclass(frozen=True)
class ThresholdRule:
    """Switch when feature(auto row) > threshold. `outcomes(auto_row, explicit rows of its split)` gives the test
    accuracy of {"keep": ..., "switch": ...}, or None where the run lacks what is needed."""

    name: str
    description: str
    feature: Callable[[dict], float | None]
    outcomes: Callable[[dict, dict[str, dict]], dict[str, float] | None]
    current: float | None
    grid: tuple[float, ...]


def race_z(row: dict) -> float | None:
    """The race's evidence for the baseline: (baseline - transferred) validation score over its standard error.
    The paired figures of `measurements.race` when recorded; else from `candidates`' validation figures and 95%
    intervals (unpaired, so a larger standard error)."""
    m = row.get("measurements") or {}
    race = m.get("race") or {}
    if race.get("standard_error"):
        return race["difference"] / race["standard_error"] if math.isfinite(race["standard_error"]) else None
    cands = m.get("candidates") or []
    base = [c for c in cands if str(c.get("candidate", "")).startswith("no transfer")]
    ours = [c for c in cands if not str(c.get("candidate", "")).startswith("no transfer")]
    if not base or not ours:
        return None
    se = [(c["interval"][1] - c["interval"][0]) / (2 * 1.96) for c in (base[0], ours[0])]
    spread = math.hypot(*se)
    return (base[0]["validation"] - ours[0]["validation"]) / spread if spread > 0 else None


def race_outcomes(auto: dict, explicit: dict[str, dict]) -> dict[str, float] | None:
    """What keeping the transferred model and what shipping the baseline would have scored on test. auto's own
    accuracy for what it shipped; for the other, the explicit run of that strategy on the same split and seed
    (an approximation: auto's candidates were fitted on its training part, without the validation rows)."""
    if auto.get("shipped") == "baseline":
        kept = explicit.get(auto.get("chosen"))
        return {"keep": kept["accuracy"], "switch": auto["accuracy"]} if kept else None
    base = explicit.get("baseline")
    return {"keep": auto["accuracy"], "switch": base["accuracy"]} if base else None


def _ship_margin() -> float | None:
    try:
        from headstart.race import SHIP_MARGIN_SE
    except ImportError:  # a headstart without the race: no margin in use to compare with
        return None
    return float(SHIP_MARGIN_SE)


RULES: dict[str, Callable[[], ThresholdRule]] = {
    "race_margin_se": lambda: ThresholdRule(
        "race_margin_se", "ship the baseline when it leads on validation by more than this many standard errors",
        race_z, race_outcomes, _ship_margin(),
        (-math.inf, *np.round(np.arange(-2, 4.01, 0.25), 2).tolist(), math.inf)),
}


def _regret(runs: list[dict], threshold: float) -> float | None:
    if not runs:
        return None
    return float(np.mean([r["best"] - r["outcomes"]["switch" if r["feature"] > threshold else "keep"]
                          for r in runs])) * 100


def leave_one_dataset_out(rows: list[dict], rule: ThresholdRule) -> dict:
    runs, skipped = [], 0
    for by in splits(rows).values():
        auto = by.get("auto")
        if auto is None:
            continue
        explicit = {s: r for s, r in by.items() if s != "auto"}
        feature, outcomes = rule.feature(auto), rule.outcomes(auto, explicit)
        if feature is None or outcomes is None or not explicit:
            skipped += 1
            continue
        runs.append({"source": auto["source"], "feature": feature, "outcomes": outcomes,
                     "best": max(r["accuracy"] for r in explicit.values())})
    sources = sorted({r["source"] for r in runs})
    held_out = []
    for source in sources:
        fit_on = [r for r in runs if r["source"] != source]
        test_on = [r for r in runs if r["source"] == source]
        entry = {"source": source, "runs": len(test_on), "fitted_on_runs": len(fit_on),
                 "regret_at_current_points": None if rule.current is None else _regret(test_on, rule.current)}
        if fit_on:
            near = rule.current if rule.current is not None else 0.0
            fitted = min(rule.grid, key=lambda t: (round(_regret(fit_on, t), 9), abs(t - near)))
            entry.update(fitted=fitted, regret_at_fitted_points=_regret(test_on, fitted))
        held_out.append(entry)
    return {"rule": rule.name, "description": rule.description, "current": rule.current, "runs": len(runs),
            "skipped_runs": skipped, "held_out": held_out}


def summarize(rows: list[dict], code: str | None = None) -> dict:
    """Everything the tables show, from the rows of one code version (`code`; default: the last row's)."""
    if code is None and rows:
        code = rows[-1].get("code")
    # regression and multi-label rows are suite_report_kinds.py's: they have no accuracy, no per-class size
    rows = [r for r in rows if r.get("kind", "classification") == "classification"]
    mine = [r for r in rows if r.get("code") == code]
    return {"code": code, "rows_used": len(mine), "rows_other_code": len(rows) - len(mine),
            "errors": [f"{r['task']} {r['per_class']}/class subset {r['subset']} {r['strategy']}"
                       for r in mine if "error" in r],
            "aggregate": aggregate(mine), "leave_one_dataset_out": [leave_one_dataset_out(mine, make())
                                                                    for make in RULES.values()]}


# ---------------------------------------------------------------- time estimates

ESTIMATE_BAND = (0.5, 2.0)  # the target: every estimate within 2x of the measured time


def estimates(rows: list[dict], code: str | None) -> dict:
    """Every candidate `auto` announced with an estimate (measurements.candidates[].estimate_s) against the time it
    measured for it (`seconds`), over one code version's auto rows of every kind: per task, the count, the worst
    ratios both ways and how many fall inside ESTIMATE_BAND."""
    per_task: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("code") != code or r.get("strategy") != "auto":
            continue
        for c in (r.get("measurements") or {}).get("candidates", []):
            if c.get("estimate_s") and c.get("seconds") is not None:
                size = r.get("per_class") or r.get("train_size")
                per_task.setdefault(r["task"], []).append(
                    {"size": size, "subset": r.get("subset"), "candidate": c["candidate"],
                     "estimate_s": c["estimate_s"], "seconds": c["seconds"],
                     "ratio": round(c["seconds"] / c["estimate_s"], 3)})
    low, high = ESTIMATE_BAND
    return {task: {"candidates": len(cs), "within": sum(low <= c["ratio"] <= high for c in cs),
                   "max_ratio": max(c["ratio"] for c in cs), "min_ratio": min(c["ratio"] for c in cs),
                   "outside": [c for c in cs if not low <= c["ratio"] <= high]}
            for task, cs in sorted(per_task.items())}


def estimates_markdown(table: dict) -> str:
    if not table:
        return "(no auto row carries time estimates)"
    lines = ["### Time estimates: measured / estimated seconds per candidate auto announced", "",
             "| task | candidates | within 0.5-2x | lowest ratio | highest ratio |", "|---|---:|---:|---:|---:|"]
    for task, t in table.items():
        lines.append(f"| {task} | {t['candidates']} | {t['within']} | {t['min_ratio']:.2f} | {t['max_ratio']:.2f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- Markdown

def _pts(x: float | None, sign: bool = True) -> str:
    return "-" if x is None else (f"{x:+.1f}" if sign else f"{x:.2f}")


def markdown(summary: dict) -> str:
    agg = summary["aggregate"]
    strategies = list(dict.fromkeys(s for e in agg for s in e["strategies"]))
    lines = [f"### Test accuracy, mean over subsets (headstart {summary['code']})", "",
             "| task | n/class | " + " | ".join(strategies) + " | best | auto chose->shipped | regret (pts) | "
             "auto - baseline (pts) | auto time / all |",
             "|---|---:|" + "---:|" * len(strategies) + "---|---|---:|---:|---:|"]
    for e in agg:
        accs = [f"{e['strategies'][s]['accuracy']:.3f} ({e['strategies'][s]['subsets']})" if s in e["strategies"]
                else "-" for s in strategies]
        choices = ", ".join(f"{k} x{v}" for k, v in e.get("auto_choices", {}).items()) or "-"
        tf = e.get("time_fraction")
        lines.append(f"| {e['task']} | {e['per_class']} | " + " | ".join(accs) + f" | {e.get('best', '-')} | "
                     f"{choices} | {_pts(e.get('regret_points'))} | {_pts(e.get('vs_baseline_points'))} | "
                     f"{'-' if tf is None else f'{tf:.2f}'} |")
    lines.append("\n(n) = subsets averaged. Regret: best explicit strategy's mean minus auto's mean. Time: auto's mean "
                 "fit time over the sum of the explicit strategies' mean fit times.")
    if summary["errors"]:
        lines.append(f"Failed fits ({len(summary['errors'])}): " + "; ".join(summary["errors"][:10]))
    for lodo in summary["leave_one_dataset_out"]:
        lines += ["", f"### Leave one data set out: {lodo['rule']} ({lodo['description']}; in use: "
                      f"{lodo['current']})", ""]
        if not lodo["held_out"]:
            lines.append(f"No auto run with the measurements this rule needs ({lodo['skipped_runs']} auto runs "
                         "lacked them); run `auto` with `baseline` and the strategies it chooses.")
            continue
        lines += ["| held-out data set | runs | fitted on runs | fitted threshold | regret at fitted (pts) | "
                  "regret at in-use (pts) |", "|---|---:|---:|---:|---:|---:|"]
        for h in lodo["held_out"]:
            lines.append(f"| {h['source']} | {h['runs']} | {h['fitted_on_runs']} | {h.get('fitted', '-')} | "
                         f"{_pts(h.get('regret_at_fitted_points'))} | {_pts(h.get('regret_at_current_points'))} |")
    return "\n".join(lines)
