"""`quality="best"`: a time budget that is spent where it can buy accuracy, and left unspent where it cannot.

`fast` (the default) runs the plan `auto` chose as quickly as it can; a `time_limit` only caps it. `best` spends a
budget: the `time_limit` when one is given, else BEST_BUDGET_FACTOR times the fast plan's own estimate (about what
the anchors took over the fast plan on three held-out short-text sets: SetFit at its defaults 9-13x `auto`'s wall
time). It is spent on the plan that gains most from time, `setfit` (texts, 32 to 255 per class):

1. the fast plan: the chosen encoder tuned for SetFit.epochs passes, then scored on held-out rows (`check`): a
   logistic-regression head solved on the tuned embeddings of the tuning rows, the held-out rows' mean
   log-likelihood of their true class (smoother than accuracy on a hundred rows) and accuracy;
2. under `auto`, the Trainer's recipe (methods/text_finetune.py: cross-entropy through a fresh head, the
   estimator's epochs) on the untuned encoder, where its time (FINETUNE_PASS_COST times a timed pass of the fast
   plan, per epoch) fits what is left: checked the same way, the better one leads. Neither tuning wins on every
   data set (tweets: the Trainer 0.669, SetFit's tuning 0.603; election: 0.771 and 0.890), so the rows decide;
3. each other packaged encoder (not when the user named the backbone) whose tuning, timed on these texts
   (fewshot.estimate_setfit_seconds), fits what is left: tuned and checked the same way; the better one leads.
   Where what is left is under the fast plan's own tuning time, the larger encoder is not even built and timed;
   where not even a block of passes and a check fit after the fast plan, nothing is checked;
4. more passes on a SetFit-tuned leader, BLOCK_PASSES at a time, each block checked. It stops when PATIENCE blocks
   in a row did not improve the held-out fit (more time does not buy accuracy here: said, the rest left unspent),
   when the next block would not fit the budget, or at MAX_PASSES. The leader's weights at its best check ship.
Too few held-out rows to tell candidates apart (< MIN_CHECK_ROWS): nothing is spent, and the reasons say so.
The races that follow (the untuned encoder, the no-transfer model) are the fast plan's. The held-out rows chose
among a few checkpoints, so their figure is a little optimistic for the one shipped; the report says so.
Other plans run as `fast` does under `best` (said once): their budget use is future work (issue 31).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .backbone_choice import candidate_specs
from .backbones import Backbone, available_offline, create_backbone
from .errors import HeadstartError
from .heads import HeadConfig, build_head
from .inference import run_over
from .probe import fit_probe
from .progress import say

QUALITIES = ("fast", "best")
BEST_BUDGET_FACTOR = 10  # `best` without a time limit: this many times the fast plan's estimate
TUNING_SHARE = 0.85  # of the budget, for tuning (as `setfit`'s deadline under a time limit); the rest: head, races
BLOCK_PASSES = 2  # passes between two checks
MAX_PASSES = 20  # SetFit's 20 pairs per text and class side, in our all-pairs batches: a generous ceiling
PATIENCE = 2  # blocks in a row without a better held-out fit before the budget is left unspent
# A pass of the Trainer's recipe (batches of 8, an optimiser step each) over a pass of SetFit's tuning (batches of
# 32, every pair); measured on tweets here: see FINETUNE_PASS_COST's note in docs/decisions.md
FINETUNE_PASS_COST = 1.1
MIN_CHECK_ROWS = 20  # fewer held-out rows than this: a check's standard error (~10 points) hides any gain


def check_quality(quality: str) -> None:
    if quality not in QUALITIES:
        raise HeadstartError(f"quality must be one of {', '.join(QUALITIES)}, not '{quality}'")


def note_unspent(est, strategy: str) -> None:
    """`best` on a plan that does not spend a budget yet: said, so the user does not wait for a gain."""
    if getattr(est, "quality", "fast") == "best":
        say(est.verbose, f"quality best: plan '{strategy}' runs as it does under fast (only `setfit`, texts with 32 "
            "to 255 per class, spends a budget today)")


def budget_seconds(est, fast_estimate: float | None) -> tuple[float, str]:
    """The seconds `best` may spend and where that figure comes from."""
    if est.time_limit is not None:
        return float(est.time_limit), "the time limit"
    fast = float(fast_estimate or 0.0)
    return BEST_BUDGET_FACTOR * fast, f"{BEST_BUDGET_FACTOR}x the fast plan's estimate of {fast:.0f} s"


@dataclass
class Labeled:
    """Texts and their class indices."""

    items: Sequence[str]
    targets: np.ndarray


def check(est, backbone: Backbone, tuning: Labeled, held_out: Labeled, n_classes: int) -> dict:
    """The tuned encoder's held-out fit: a logistic head solved on the tuning rows' embeddings, scored on the
    held-out rows (mean log-likelihood of the true class, accuracy)."""
    started = time.perf_counter()
    feats, ok = run_over(backbone, [*tuning.items, *held_out.items], est.batch_size, est.num_workers, False)
    n = len(tuning.items)
    x, fit_ok, check_ok = torch.as_tensor(feats), ok[:n], ok[n:]
    head = build_head(HeadConfig(kind="linear"), backbone.feature_dim, n_classes).eval()
    fit_probe(head, x[:n][fit_ok], torch.as_tensor(tuning.targets[fit_ok]), n_classes, est.seed)
    with torch.no_grad():
        proba = torch.softmax(head(x[n:][check_ok].float()), -1).numpy()
    y = held_out.targets[check_ok]
    truth = proba[np.arange(len(y)), y]
    return {"log_likelihood": round(float(np.log(np.clip(truth, 1e-12, None)).mean()), 5),
            "accuracy": round(float((proba.argmax(1) == y).mean()), 4), "rows": len(y),
            "check_seconds": round(time.perf_counter() - started, 2)}


@dataclass
class Tools:
    """What spend_on_setfit tunes with, given by the method that calls it (the core does not import methods)."""

    tune: Callable[..., list[dict]]  # SetFit's tuning (fewshot.contrastive_tune with the fit's settings)
    estimate: Callable[..., float]  # its time on these texts (fewshot.estimate_setfit_seconds)
    log: Callable[[dict], None] | None = None  # the run log
    finetune: Callable[..., list[dict]] | None = None  # the Trainer's recipe (text_finetune); None: not raced


@dataclass
class Leader:
    backbone: Backbone
    passes: int
    score: dict
    seconds_per_pass: float
    recipe: str = "setfit"  # or "finetune": the Trainer's recipe, which takes no more passes


def spend_on_setfit(est, backbone: Backbone, tuning: Labeled, held_out: Labeled, passes: int, started: float,
                    advice, tools: Tools) -> tuple[Backbone, list[dict], int]:
    """Tune `backbone` within the budget as the module docstring says. Returns the encoder to ship (tuned), the
    tuning records, and its passes."""
    tune, estimate, log = tools.tune, tools.estimate, tools.log
    # the Trainer's recipe starts from the untuned weights: kept before the fast plan tunes them in place
    # (not copied where too few held-out rows mean nothing will be checked)
    races_recipe = tools.finetune is not None and est.strategy == "auto" and len(held_out.targets) >= MIN_CHECK_ROWS
    untuned = copy.deepcopy(backbone) if races_recipe else None
    fast_estimate = advice.measurements.get("setfit_seconds_estimate") if advice is not None else None
    if fast_estimate is None and est.time_limit is None:  # an explicit `setfit`: nothing was estimated yet
        fast_estimate = estimate(backbone, tuning.items, passes, seed=est.seed)
    budget, why = budget_seconds(est, fast_estimate)
    deadline = started + TUNING_SHARE * budget
    n_classes = len(est.classes_)
    lines = [f"quality best: a budget of {budget:.0f} s ({why}), spent where the held-out rows show a gain"]
    records: list[dict] = []

    def run(model: Backbone, epochs: int, seed: int, offset: int, how: Callable = tune) -> tuple[list[dict], float]:
        t0 = time.perf_counter()
        logged = None if log is None else (lambda r: log({**r, "epoch": r["epoch"] + offset}))
        done = how(model, tuning.items, tuning.targets, epochs=epochs, seed=seed, deadline=deadline, log=logged)
        for r in done:
            r["epoch"] += offset
        return done, (time.perf_counter() - t0) / max(1, len(done))

    history, per_pass = run(backbone, passes, est.seed, 0)
    check_guess = per_pass / 3 + 1.0  # a check: one forward pass over the texts (a third of a pass), then a solve
    stop = None
    if len(held_out.targets) < MIN_CHECK_ROWS:
        stop = (f"{len(held_out.targets)} held-out rows (< {MIN_CHECK_ROWS}) cannot tell a better model from "
                "noise")
    elif time.perf_counter() + BLOCK_PASSES * per_pass + check_guess > deadline:
        stop = f"the fast plan used the budget: {BLOCK_PASSES} more passes and a check would not fit"
    if stop is not None:
        lines.append(f"-> nothing more spent: {stop}")
        return _done(est, advice, lines, {"budget_s": round(budget, 1), "spent": "fast plan only",
                                          "stopped_by": stop}, backbone, history, passes)
    leader = Leader(backbone, len(history), check(est, backbone, tuning, held_out, n_classes), per_pass)
    records.append(_record(leader, "fast plan"))
    if untuned is not None:
        left, epochs = deadline - time.perf_counter(), max(1, est.epochs)
        guess = FINETUNE_PASS_COST * epochs * per_pass + leader.score["check_seconds"]
        if guess > left:
            lines.append(f"the Trainer's recipe ({epochs} epochs): about {guess:.0f} s, over the "
                         f"{max(0.0, left):.0f} s left; not tried")
        else:
            tried, ft_per_pass = run(untuned, epochs, est.seed, 0, tools.finetune)
            challenger = Leader(untuned, len(tried), check(est, untuned, tuning, held_out, n_classes), ft_per_pass,
                                "finetune")
            records.append(_record(challenger, "the Trainer's recipe"))
            if challenger.score["log_likelihood"] > leader.score["log_likelihood"]:
                leader, history = challenger, tried
        untuned = None  # 90-420 MB of weights: not held through the larger encoder's tuning
    for spec in _other_encoders(est, backbone):
        left = deadline - time.perf_counter()
        # the others cost more (backbone_choice.relative_cost): with less left than this encoder's tuning took,
        # one is not even built and timed, which takes seconds
        if left < passes * per_pass + leader.score["check_seconds"]:
            lines.append(f"{spec.name}: not tried, under the {max(0.0, left):.0f} s left (this encoder's tuning "
                         "took longer than that)")
            continue
        other = create_backbone(spec, pretrained=est.pretrained)
        guess = estimate(other, tuning.items, passes, seed=est.seed)
        if guess > left:
            lines.append(f"{spec.name}: tuning it would take about {guess:.0f} s, over the {max(0.0, left):.0f} s "
                         "left; not tried")
            continue
        tried, other_per_pass = run(other, passes, est.seed, 0)
        challenger = Leader(other, len(tried), check(est, other, tuning, held_out, n_classes), other_per_pass)
        records.append(_record(challenger, "a larger encoder"))
        if challenger.score["log_likelihood"] > leader.score["log_likelihood"]:
            leader, history = challenger, tried
    saved, misses, stop = None, 0, f"the ceiling of {MAX_PASSES} passes"
    ran = leader.passes  # passes the leader's weights have had; `leader.passes`: those of its best check
    if leader.recipe == "finetune":  # its schedule decays to 0 over its epochs: more passes would restart it
        ran, stop = MAX_PASSES, "the Trainer's recipe leads, and it runs its own epochs only"
    while ran < MAX_PASSES:
        if time.perf_counter() + BLOCK_PASSES * leader.seconds_per_pass + leader.score["check_seconds"] > deadline:
            stop = "the budget: another block would not fit"
            break
        if saved is None:  # the weights now are the best so far: kept in case the next blocks do worse
            saved = {k: v.detach().clone() for k, v in leader.backbone.state_dict().items()}
        more, _ = run(leader.backbone, min(BLOCK_PASSES, MAX_PASSES - ran), est.seed + ran, ran)
        if not more:
            break
        history.extend(more)
        ran += len(more)
        score = check(est, leader.backbone, tuning, held_out, n_classes)
        records.append(_record(Leader(leader.backbone, ran, score, leader.seconds_per_pass), "more passes"))
        if score["log_likelihood"] > leader.score["log_likelihood"]:
            leader.passes, leader.score, saved, misses = ran, score, None, 0
            continue
        misses += 1
        if misses >= PATIENCE:
            stop = (f"{PATIENCE} blocks of {BLOCK_PASSES} passes in a row did not improve the held-out fit: more "
                    "time does not buy accuracy on this data")
            break
    if saved is not None:
        leader.backbone.load_state_dict(saved)
    history = [r for r in history if r["epoch"] <= leader.passes]
    left = max(0.0, deadline - time.perf_counter())
    lines.extend(f"candidate {r['candidate']}: held-out accuracy {r['accuracy']:.3f}, log-likelihood "
                 f"{r['log_likelihood']:.3f} ({r['rows']} rows)" for r in records)
    how = "SetFit's tuning" if leader.recipe == "setfit" else "the Trainer's recipe"
    lines.append(f"-> ships {leader.backbone.spec.name} tuned by {how}, {leader.passes} passes; stopped by {stop}; "
                 f"{left:.0f} s of the tuning budget unspent")
    summary = {"budget_s": round(budget, 1), "budget_from": why, "checks": records, "stopped_by": stop,
               "unspent_s": round(left, 1), "selected_on": "held-out rows (a little optimistic for the one shipped)"}
    return _done(est, advice, lines, summary, leader.backbone, history, leader.passes)


def _other_encoders(est, backbone: Backbone) -> list:
    """Packaged text encoders besides `backbone`, installed, when the user left the choice to `auto`."""
    if est.backbone is not None:
        return []
    return [s for s in candidate_specs("text") if s.name != backbone.spec.name and available_offline(s)]


def _record(leader: Leader, what: str) -> dict:
    recipe = "setfit" if leader.recipe == "setfit" else "fine-tune"
    return {"candidate": f"{recipe} on {leader.backbone.spec.name}, {leader.passes} passes ({what})", **leader.score,
            "seconds_per_pass": round(leader.seconds_per_pass, 2)}


def _done(est, advice, lines: list[str], summary: dict, backbone: Backbone, history: list[dict], passes: int):
    for line in lines:
        say(est.verbose, f"auto: {line}")
    if advice is not None:
        advice.reasons.extend(lines)
        advice.measurements["budget"] = summary
    return backbone, history, passes
