"""`strategy="auto"`: the practitioners' rules of thumb, turned into decisions made from measurements.

Measured on the user's data before any fine-tuning (advisor_measures.py; all from cached features, or cheap):
- examples per class (smallest class) and in total;
- probe accuracy: cross-validated logistic regression on the frozen features, and its gain over chance,
  gain = (probe - chance) / (1 - chance): how far the source features already go on this target;
- LogME of the frozen features (reported; the probe is what the thresholds use, being in accuracy units);
- a from-scratch reference: the same classifier on raw inputs (16x16 grey pixels for images, TF-IDF for texts).
  If the frozen features do no better, transfer is not helping (negative transfer) and we say so;
- the cost of one training step on this hardware (a timed forward pass, x3 for images, x4 for texts: FINETUNE_COST).

Rules, in order (thresholds are in the code below, each with its reason printed; docs/decisions.md has the
measurement behind each and the results file it came from):
0. fewer than 8 labeled images (6 texts) in a class, before any hold-out (`few_shot_advice`): `fewshot`, class
   prototypes from every label.
0b. texts with 32 to 255 in the smallest class, before any hold-out: `setfit` (encoder tuned on pairs of the
   labeled texts, then the cross-validated logistic-regression head).
1. fewer than 10 examples in a class (after the validation hold-out, so at most 2 per class held out): train the
   head only; a fine-tune's validation win cannot be told from noise on so few rows.
2. frozen features no better than the raw-input reference: say so; images with >= 200 per class (after the
   hold-out): `truncate` (keep the early, generic layers, retrain the rest); with less, retraining layers from
   scratch would overfit, so the size rules below decide. Texts go on to the size rules.
3. fine-tuning would not fit the time limit: the head only.
4. frozen features that fit the target well (gain >= 0.6) and fewer than 150 per class: the head only, even where
   raw inputs do as well.
5. small (< 50 per class), features that fit less well: `two-stage` (it keeps the probe unless fine-tuning wins on
   validation).
6. medium (< 1000 per class): `two-stage` (probe, then fine-tune everything with discriminative rates), unless
   the probe is near its ceiling (gain >= 0.9) and fine-tuning would cost over 5 minutes (under a time limit; without
   one, over 5,400 example passes, so that the plan never depends on the machine's speed): then the head only.
7. large: `full` fine-tuning when unlike the source (gain < 0.6), else `two-stage`.
Regression and multi-label (head_task_advice): the solved head's cross-validated score on the frozen features (ridge
leave-one-out R^2; one-vs-rest micro-F1) against the same head on the no-transfer inputs (grey pixels, TF-IDF), the
fine-tune's cost, then fine-tuning from 1,000 examples.
Every `auto` plan then races the no-transfer model on validation (race.py); a text `full` fine-tune first races
the frozen encoder's probe (race_untuned.races_frozen_probe).
For texts, a plan that fine-tunes the encoder (`two-stage`, `full`) becomes `full` at the Hugging Face Trainer's
recipe: one rate for every encoder layer, a fresh head, batches of 8 (TEXT_FINETUNE).
Whatever the rule, a plan that ends with the probe (head only, or a fine-tune that did not beat it on validation)
has its head refitted on the validation rows too once they have done their work (probe.refit_probe).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from .advisor_measures import HEAD_TASK_MEASURES, raw_input_accuracy, raw_input_score, time_forward
from .data.labeled import stratified_subsample
from .inference import embed
from .progress import say
from .rank import logme, probe_accuracy
from .strategies import SetFit, get_strategy

# The thresholds below: what each rule does and, in docs/decisions.md, the measurement that set it (by rule number).
SMALL_PER_CLASS, LARGE_PER_CLASS = 50, 1000  # rules 5-7
TINY_PER_CLASS = 10  # rule 1: below it, a fine-tune's gain on 1-2 validation rows per class is noise
TRUNCATE_PER_CLASS = 200  # rule 2: under negative transfer, images retrain their upper layers from this size
# TRUNCATE_TEXT (rule 2): never `truncate` for texts; a fine-tuned encoder still beats a TF-IDF reference
SIMILAR_GAIN, CEILING_GAIN = 0.6, 0.9  # rules 4, 6, 7: the probe's gain over chance
HEAD_ONLY_PER_CLASS = 150  # rule 4, after the hold-out: below it, fine-tuning well-fitting features gained nothing
FEWSHOT_PER_CLASS = {"image": 8, "text": 6}  # rule 0, before the hold-out: prototypes beat the probe below these
SETFIT_PER_CLASS = (32, 256)  # rule 0b, smallest class, before the hold-out: tuning the encoder on pairs pays here
# Stands in for the tuning's time only where no estimate is given (fewshot.estimate_setfit_seconds times the
# user's own texts): tweets on a 2-core CPU; reviews of 150 words cost 6x as much.
SETFIT_SECONDS_PER_TEXT = 0.02
# TEXT_FINETUNE: texts fine-tune as the Hugging Face Trainer does: `full`, every encoder layer at one rate (5e-5
# under the default lr of 1e-3), a fresh head at lr, batches of 8; two-stage's top layers overfit on tweets.
TEXT_FINETUNE = {"backbone_lr_scale": 0.05, "finetune_batch_size": 8}
NEGATIVE_MARGIN = 0.02  # rule 2: frozen features must beat the raw-input reference by more than this
# "Fine-tuning would cost a lot" for rule 6: estimated seconds under a time limit; without one, the plan must not
# depend on this machine's speed, so example passes (epochs x training examples): 300 s of Lite0 at ~18 images/s.
EXPENSIVE_SECONDS = 300
EXPENSIVE_EXAMPLE_PASSES = 5400
# A training step's cost per example over a timed forward pass's (rule 3), times every labeled example.
FINETUNE_COST = {"image": 3, "text": 4}
MAX_MEASURE_ROWS = 1000  # the probe and LogME run on a subsample: their cost grows ~linearly (11 s at 800 rows here)


@dataclass
class Advice:
    strategy: str
    options: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    measurements: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def decide(*, per_class: int, n_train: int, n_classes: int, probe: float, baseline: float, logme_score: float,
           seconds_per_item: float, epochs: int, time_limit: float | None, modality: str = "image") -> Advice:
    """Apply the rules above to the measurements; every branch says why, with the numbers it used."""
    chance = 1.0 / n_classes
    gain = (probe - chance) / (1 - chance)
    finetune_seconds = epochs * n_train * seconds_per_item * FINETUNE_COST.get(modality, 3)
    m = {"per_class_min": per_class, "n_train": n_train, "chance": round(chance, 4), "probe_accuracy": round(probe, 4),
         "probe_gain": round(gain, 4), "raw_input_accuracy": round(baseline, 4), "logme": round(logme_score, 4),
         "seconds_per_item_forward": round(seconds_per_item, 5), "finetune_seconds_estimate": round(finetune_seconds)}
    said = [f"smallest class has {per_class} examples ({n_train} training in all, {n_classes} classes)",
            f"frozen features: probe accuracy {probe:.3f} vs chance {chance:.3f} (gain {gain:.2f}), LogME "
            f"{logme_score:.3f}; raw-input reference {baseline:.3f}",
            f"fine-tuning {epochs} epoch(s) would take about {finetune_seconds:.0f} s here"]

    def advice(strategy: str, why: str, **options) -> Advice:
        return Advice(strategy, options, [*said, f"-> {strategy}: {why}"], m)

    if per_class < TINY_PER_CLASS:
        return advice("features", f"fewer than {TINY_PER_CLASS} examples in a class: a fine-tune's gain on so few "
                      "validation rows cannot be told from noise, and fine-tuning would memorise them")
    if probe <= baseline + NEGATIVE_MARGIN:
        said.append(f"negative transfer: the frozen features ({probe:.3f}) fit no better than a from-scratch model "
                    f"on raw inputs ({baseline:.3f})")
        if modality != "image":  # TRUNCATE_TEXT says why texts go on to the size rules
            said.append("texts: TF-IDF is a strong reference on short texts and a fine-tuned encoder still beats it, "
                        "so the upper layers are not retrained from scratch")
        elif per_class >= TRUNCATE_PER_CLASS:
            return advice("truncate", "keep the early, generic layers and retrain the rest for this target")
        else:
            said.append(f"too few examples (< {TRUNCATE_PER_CLASS} per class) to retrain upper layers from scratch: "
                        "the size rules decide")
    if time_limit is not None and finetune_seconds > time_limit:
        return advice("features", f"fine-tuning would not fit the time limit of {time_limit:.0f} s")
    if gain >= SIMILAR_GAIN and per_class < HEAD_ONLY_PER_CLASS:
        return advice("features", f"the frozen features fit the target well (gain >= {SIMILAR_GAIN}) and there are "
                      f"fewer than {HEAD_ONLY_PER_CLASS} examples per class: measured, a fine-tune on top of the "
                      "cross-validated probe gained nothing at this size, for 2-4x the time; train the head only")
    if per_class < SMALL_PER_CLASS:
        # two-stage starts as the probe and keeps it unless fine-tuning wins on validation: measured here, it beat
        # head-only and top-layer fine-tuning on small Fashion-MNIST and tweet subsets (bench/auto_regret.py)
        return advice("two-stage", f"small data, features that fit less well (gain < {SIMILAR_GAIN}): probe first, "
                      "then fine-tune with discriminative rates")
    if per_class < LARGE_PER_CLASS:
        expensive = (finetune_seconds > EXPENSIVE_SECONDS if time_limit is not None
                     else epochs * n_train > EXPENSIVE_EXAMPLE_PASSES)
        if gain >= CEILING_GAIN and expensive:
            cost = (f"over {EXPENSIVE_SECONDS} s" if time_limit is not None
                    else f"over {EXPENSIVE_EXAMPLE_PASSES} example passes ({epochs} x {n_train})")
            return advice("features", f"the probe is near its ceiling (gain >= {CEILING_GAIN}) and fine-tuning "
                          f"would cost {cost}")
        return advice("two-stage", "medium data: probe first, then fine-tune all layers with discriminative rates")
    if gain < SIMILAR_GAIN:
        return advice("full", f"large data unlike the source (gain < {SIMILAR_GAIN}): retrain the whole network")
    return advice("two-stage", "large data similar to the source: probe, then fine-tune everything")


def few_shot_advice(class_counts: dict[str, int], modality: str = "image", time_limit: float | None = None,
                    head: str = "linear", estimate: Callable[[int], float] | None = None) -> Advice | None:
    """Rules taken before any hold-out, as they use every label: under FEWSHOT_PER_CLASS examples in a class,
    prototypes (methods/fewshot.py); texts with SETFIT_PER_CLASS examples per class, `setfit`.

    Holding out a validation split would take a third or more of so few labels, and a head trained on the rest
    does no better than class means: on Fashion-MNIST with EfficientNet-Lite0 (`headstart fewshot-eval`), the
    prototype classifier matched or beat logistic regression on the same features up to 5 shots.
    """
    smallest = min(class_counts.values()) if class_counts else 0
    said = [f"smallest class has {smallest} labeled examples ({len(class_counts)} classes)"]
    limit = FEWSHOT_PER_CLASS.get(modality, 6)
    if 0 < smallest < limit:
        return Advice("fewshot", {}, [*said, f"-> fewshot: fewer than {limit} examples in a class: class prototypes "
                                      "of the pretrained features, all labels used, nothing to overfit"],
                      {"per_class_min": smallest})
    low, high = SETFIT_PER_CLASS
    if modality != "text" or head != "linear" or not low <= smallest < high:
        return None
    passes = SetFit.epochs
    measured = estimate is not None
    seconds = estimate(passes) if measured else passes * sum(class_counts.values()) * SETFIT_SECONDS_PER_TEXT
    if time_limit is not None and seconds > time_limit:
        return None  # the measured rules after the hold-out respect the limit
    how = "timed on a few batches of these texts" if measured else "at the speed of tweets on a 2-core CPU"
    return Advice("setfit", {"epochs": passes}, [
        *said, f"tuning the encoder on them ({passes} passes) would take about {seconds:.0f} s ({how})",
        f"-> setfit: texts with {low} to {high - 1} examples per class: tune the encoder on pairs of them, then a "
        "cross-validated logistic-regression head; on tweets at 64 per class this beat the head on frozen features "
        "by 1.3 points over 8 training subsets"],
        {"per_class_min": smallest, "setfit_seconds_estimate": round(seconds)})


def advise(backbone, modality, train, task: str, features: tuple[np.ndarray, np.ndarray] | None, *, epochs: int,
           time_limit: float | None, seed: int = 0) -> Advice:
    """Take the measurements on the training data (features: cached frozen features and their ok-mask)."""
    if task in ("regression", "multilabel") and features is not None:
        return head_task_advice(task, backbone, modality, train, features, epochs, seed)
    if task != "classification" or features is None:
        big = len(train) >= 1000
        return Advice("two-stage" if big else "features", reasons=[
            f"{task} with {len(train)} training examples -> "
            + ("two-stage: enough data to fine-tune" if big else "features: too few to fine-tune safely")])
    feats, ok = features
    rows = np.flatnonzero(ok)
    rows = rows[stratified_subsample(len(rows), train.targets[rows], seed, MAX_MEASURE_ROWS)]
    f, y = feats[rows], train.targets[rows]
    advice = decide(
        per_class=int(min(train.class_counts().values())), n_train=len(train), n_classes=len(train.classes),
        probe=probe_accuracy(f, y, seed=seed),
        baseline=raw_input_accuracy(modality.name, [train.items[i] for i in rows], y, seed),
        logme_score=logme(f, y), seconds_per_item=time_forward(backbone, modality, train.items, seed=seed),
        epochs=epochs, time_limit=time_limit, modality=modality.name)
    return with_text_finetune(advice) if modality.name == "text" else advice


def advise_fit(est, backbone, train):
    """`auto`'s strategy for an estimator's fit: measure, then let the rules above pick (and print their reasons)."""
    feats = None
    if est.head == "linear" or est._task == "classification":  # the probe reads the features the head will
        feats = embed(backbone, train.items, batch_size=est.batch_size, num_workers=est.num_workers,
                      use_cache=est.use_cache, cache_dir=est.cache_dir, verbose=est.verbose)
    advice = advise(backbone, est._modality, train, est._task, feats, epochs=est.epochs,
                    time_limit=est.time_limit, seed=est.seed)
    for line in advice.reasons:
        say(est.verbose, f"auto: {line}")
    return get_strategy(advice.strategy, **advice.options), advice


def head_task_advice(task: str, backbone, modality, train, features: tuple[np.ndarray, np.ndarray], epochs: int,
                     seed: int) -> Advice:
    """Regression and multi-label: the solved head's cross-validated score on the frozen features against the
    same head on the no-transfer inputs, the fine-tune's cost, then the size rule (fine-tune from 1,000 examples).
    The race after training (race.py) ships the no-transfer model if it wins."""
    feats, ok = features
    rows = np.flatnonzero(ok)
    if len(rows) > MAX_MEASURE_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_MEASURE_ROWS, replace=False))
    y = train.targets[rows].astype(np.float64)
    what, measure = HEAD_TASK_MEASURES[task]
    probe = measure(feats[rows], y, seed)
    baseline = raw_input_score(task, modality.name, [train.items[i] for i in rows], y, seed)
    per_item = time_forward(backbone, modality, train.items, seed=seed)
    seconds = epochs * len(train) * per_item * FINETUNE_COST.get(modality.name, 3)
    big = len(train) >= 1000
    reasons = [f"{task} with {len(train)} training examples",
               f"frozen features: {what} {probe:.3f}; raw-input reference (the same head on "
               f"{'TF-IDF' if modality.name == 'text' else 'grey pixels'}) {baseline:.3f}",
               f"fine-tuning {epochs} epoch(s) would take about {seconds:.0f} s here"]
    if probe <= baseline + NEGATIVE_MARGIN:
        reasons.append(f"negative transfer: the frozen features ({probe:.3f}) fit no better than a from-scratch "
                       f"model on raw inputs ({baseline:.3f}); the no-transfer model races the result on validation")
    strategy = "two-stage" if big else "features"
    reasons.append(f"-> {strategy}: " + ("enough data to fine-tune" if big else "too few to fine-tune safely"))
    key = "r2" if task == "regression" else "micro_f1"
    advice = Advice(strategy, {}, reasons, {"n_train": len(train), f"probe_{key}": round(probe, 4),
                                            f"raw_input_{key}": round(baseline, 4),
                                            "seconds_per_item_forward": round(per_item, 5),
                                            "finetune_seconds_estimate": round(seconds)})
    return with_text_finetune(advice) if modality.name == "text" else advice


def with_text_finetune(advice: Advice) -> Advice:
    """Texts that would fine-tune the encoder (`two-stage`, `full`) do so at the Trainer's recipe (TEXT_FINETUNE)."""
    if advice.strategy not in ("two-stage", "full"):
        return advice
    planned, rate = advice.strategy, TEXT_FINETUNE["backbone_lr_scale"]
    advice.strategy, advice.options = "full", {**advice.options, **TEXT_FINETUNE}
    instead = "" if planned == "full" else f", in place of {planned}"
    advice.reasons.append(f"-> full (texts{instead}): every encoder layer at one rate (lr x {rate:g}) under a fresh "
                          f"head, in batches of {TEXT_FINETUNE['finetune_batch_size']}, the Hugging Face Trainer's "
                          "recipe; on tweets it beat a probe-first fine-tune with discriminative rates, whose top "
                          "layers overfit")
    return advice
