"""The estimator facade: `fit / predict / predict_proba / evaluate / save`, parameters stored in `__init__`.

Fitted state ends in `_` (scikit-learn's convention). `fit` loads the data, builds the model, lets the strategy
(or `auto`) plan the stages and hands the plan to plan_runner.py: stages that train only the head run on cached
features; stages that unfreeze layer groups run the inputs through the backbone. `hs.load` lives in
deploy/loading.py, the rebuilding in restore.py.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence

import numpy as np
from torch import nn

from ._runtime import keeps_callers_rng, seed_everything
from .advisor import advise_fit
from .backbone_choice import choose_for_fit, fit_backbone, with_choice
from .backbones import Backbone, backbone_files
from .budget import check_quality, note_unspent
from .bundle import write_bundle
from .checkpoint import run_checkpointer
from .data.labeled import LabeledData, stratified_split
from .data.summary import summarize
from .distributed import is_main_process
from .errors import HeadstartError
from .estimator_internals import EstimatorInternals
from .heads import HeadConfig, TransferModel, build_head
from .inference import embed
from .methods.adapt import adapt_to_target
from .methods.classical import CLASSICAL_HEADS, fit_classical, to_tensors
from .methods.continual import ContinualSettings, extend_estimator, remember
from .methods.fewshot import fewshot_advice, fit_fewshot
from .plan_runner import describe_plan, open_run_log, refit_final_probe, run_plan
from .probe import is_probe_head
from .progress import say
from .race import announce_plan, race_baseline
from .race_untuned import race_frozen_probe, races_frozen_probe
from .strategies import get_strategy
from .thresholds import set_decision_thresholds
from .train import LoopConfig


class TransferEstimator(EstimatorInternals):
    """Shared machinery of the image estimators; use `ImageClassifier` or `ImageRegressor`."""

    modality = "image"
    default_task = "classification"
    default_backbone = "efficientnet_lite0"

    def __init__(
        self,
        backbone: str | None = None,
        strategy: str = "auto",
        *,
        task: str | None = None,
        head: str = "linear",
        epochs: int = 3,
        head_epochs: int = 60,
        lr: float = 1e-3,
        batch_size: int = 32,
        image_size: int | None = None,
        val_fraction: float = 0.2,
        patience: int = 3,
        last_n: int = 2,
        pretrained: bool = True,
        seed: int = 0,
        strict: bool = False,
        num_workers: int | None = None,
        mixed_precision: str = "auto",
        cache_dir: str | None = None,
        use_cache: bool = True,
        out_dir: str | None = None,
        time_limit: float | None = None,
        quality: str = "fast",
        input_col: str | None = None,
        label_col: str = "label",
        verbose: bool = True,
        memory: int = 0,
        adapt: str = "auto",
        augment: bool = True,
    ) -> None:
        self.backbone = backbone
        self.strategy = strategy
        self.task = task
        self.head = head
        self.epochs = epochs
        self.head_epochs = head_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.patience = patience
        self.last_n = last_n
        self.pretrained = pretrained
        self.seed = seed
        self.strict = strict
        self.num_workers = num_workers
        self.mixed_precision = mixed_precision
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.out_dir = out_dir
        self.time_limit = time_limit
        self.quality = quality  # fast: the plan as quickly as it runs; best: spend the budget (budget.py)
        self.input_col = input_col
        self.label_col = label_col
        self.augment = augment  # light crops and flips on training images (texts have none)
        self.verbose = verbose
        self.memory = memory  # exemplars kept per class for continual learning (extend); 0: none
        self.adapt = adapt  # with fit(unlabeled=...): auto | adabn | coral | dann (methods/adapt.py)

    # --- scikit-learn conventions -------------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params) -> TransferEstimator:
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"unknown parameter '{k}' for {type(self).__name__}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v)
        return f"{type(self).__name__}({changed})"

    @property
    def _task(self) -> str:
        return self.task or self.default_task


    # --- fit --------------------------------------------------------------------------------------------
    @keeps_callers_rng  # fit seeds the global generators: the caller's own draws continue as if it had not run
    def fit(self, data, valid=None, resume: str | None = None, unlabeled=None) -> TransferEstimator:
        """Train on `data` (a folder per class or a CSV); hold out a stratified split unless `valid` is given.
        `resume`: a previous run's output folder; training continues from its last checkpointed epoch.
        `unlabeled`: target-domain inputs (folder or file) to adapt to with method `adapt` (methods/adapt.py)."""
        started = time.perf_counter()
        check_quality(self.quality)
        seed_everything(self.seed)
        full = self._load(data)
        self.backbone_choice_ = choose_for_fit(self, full, valid, started)  # auto with no backbone: which one
        if self.strategy in ("fewshot", "setfit") or (advice := fewshot_advice(self, full, unlabeled)) is not None:
            advice = None if self.strategy != "auto" else with_choice(advice, self.backbone_choice_)
            return fit_fewshot(self, full, valid, started, advice, unlabeled, resume)
        if valid is not None:
            train, val = full, self._align(self._load(valid), full.classes)
        else:
            tr_idx, va_idx = stratified_split(full, self.val_fraction, self.seed)
            train, val = full.subset(tr_idx), full.subset(va_idx)
        self.classes_ = list(full.classes)
        if self._task == "regression":
            self.target_scaling_ = {"mean": float(train.targets.mean()), "std": float(train.targets.std() or 1.0)}
        say(self.verbose, f"data: {len(train)} training and {len(val)} validation {self._modality.noun}"
            + (f", {len(self.classes_)} classes" if self.classes_ else "")
            + (f"; skipped {len(full.skipped)} unusable input(s), first {full.skipped[0][0]}: {full.skipped[0][1]}"
               if full.skipped else ""))
        backbone = fit_backbone(self, train)  # baseline: no transfer; else the chosen or the named backbone
        classical = self.head in CLASSICAL_HEADS
        if classical:  # a scikit-learn model on frozen features: no torch head, no stages
            head, (strategy, self.advice_) = nn.Identity(), self._classical_fit(backbone, train)
        else:
            head = build_head(HeadConfig(kind=self.head), backbone.feature_dim, max(1, len(self.classes_)))
            self.classical_ = None
            if self.strategy == "auto":
                strategy, self.advice_ = advise_fit(self, backbone, train)
            else:
                strategy, self.advice_ = get_strategy(self.strategy, last_n=self.last_n), None
        self.advice_ = with_choice(self.advice_, self.backbone_choice_)  # the choice's reasons come first
        note_unspent(self, strategy.name)
        model = TransferModel(backbone, head)
        stages = [] if classical else strategy.plan(backbone.group_names(), self.epochs, self.lr, self.head_epochs)
        solved = is_probe_head(head)  # head stages solved (probe.py, probe_heads.py), not trained
        say(self.verbose, f"backbone {backbone.spec.name} ({backbone.feature_dim} features, "
            f"{len(backbone.group_names())} layer groups); strategy {strategy.name}: "
            + describe_plan(stages, solved, self.batch_size, self._task))
        loop = LoopConfig(patience=self.patience, mixed_precision=self.mixed_precision,
                          freeze_bn_stats=self.pretrained, verbose=self.verbose)
        log = open_run_log(self.out_dir, is_main_process())
        ckpt = run_checkpointer(self, resume, len(train), len(val), stages, log)
        self.history_: list[dict] = list(ckpt.earlier_history) if ckpt else []
        loop = announce_plan(self, backbone, stages, train, val, loop, started)  # estimated time; the time limit
        planned = time.perf_counter()
        backbone_trained = run_plan(self, model, stages, train, val, solved, loop, log, ckpt)
        if unlabeled is not None:  # domain adaptation to the unlabeled target data
            backbone_trained = adapt_to_target(self, model, train, val, unlabeled, stages, backbone_trained, log,
                                               ckpt)
        self.model_ = model.eval()
        self.spec_ = backbone.spec
        self.backbone_trained_ = backbone_trained
        self.strategy_ = {"name": strategy.name, "stages": [s.to_dict() for s in stages]}
        self.data_summary_ = summarize(full, train, val, self.modality)
        val_scores = self._raw_scores(val.items)  # kept for the report's calibration plot and worst examples
        if self.strategy == "auto" and not classical and unlabeled is None and len(val):
            if backbone_trained and races_frozen_probe(self, stages):  # no probe stage to fall back on
                val_scores = race_frozen_probe(self, train, val, val_scores, time.perf_counter() - planned,
                                               "validation rows")
            val_scores = race_baseline(self, train, val, val_scores, time.perf_counter() - planned, loop)
        self.thresholds_ = None  # the validation metrics decide at 0.5: out-of-sample for the thresholds below
        self.metrics_ = {"validation": self._score(val, val_scores),
                         "fit_seconds": round(time.perf_counter() - started, 2)}
        set_decision_thresholds(self, val, val_scores)  # multi-label: per-label thresholds where they help
        if valid is None and unlabeled is None and is_probe_head(self.model_.head) and not self.backbone_trained_:
            refit_final_probe(self, self.model_.backbone, train, val)
        self.memory_, self.continual_ = remember(self, train), None
        if self.out_dir and is_main_process():  # one writer when several processes train together
            from .run_outputs import write_run_outputs  # the report's plotting loads only when a run writes one

            write_run_outputs(self, val, val_scores)
        if ckpt is not None:
            ckpt.remove()  # the bundle now holds the result
        return self

    def _classical_fit(self, backbone: Backbone, train: LabeledData):
        """Fit the scikit-learn head on cached frozen features (see methods/classical.py for how it is saved)."""
        if self._task != "classification":
            raise HeadstartError(f"head '{self.head}' (scikit-learn) supports classification only, not {self._task}")
        if self.strategy not in ("auto", "features"):
            raise HeadstartError(f"head '{self.head}' is a scikit-learn model on frozen features: use strategy "
                                 "'features' (or 'auto'), or a torch head (linear, torch-mlp) to fine-tune")
        feats, ok = embed(backbone, train.items, batch_size=self.batch_size, num_workers=self.num_workers,
                          use_cache=self.use_cache, cache_dir=self.cache_dir, verbose=self.verbose)
        self.classical_ = fit_classical(self.head, feats[ok], train.targets[ok], self.seed)
        self._classical_saved = to_tensors(self.head, feats[ok], train.targets[ok], self.seed, fitted=self.classical_)
        say(self.verbose, f"head: scikit-learn {self.head} fitted on {int(ok.sum())} cached feature rows")
        return get_strategy("features"), None

    # --- predict ----------------------------------------------------------------------------------------
    def predict_proba(self, inputs: str | Sequence[str]) -> np.ndarray:
        """Class (or per-label) probabilities, one row per image; rows of unreadable images are NaN."""
        self._check_fitted()
        return self._raw_scores(self._inputs(inputs))[0]

    def predict(self, inputs: str | Sequence[str]) -> list:
        """Labels (classification), label lists (multi-label) or values (regression); None if unreadable."""
        self._check_fitted()
        scores, ok = self._raw_scores(self._inputs(inputs))
        return [self._decode(s) if k else None for s, k in zip(scores, ok)]

    def evaluate(self, data) -> dict:
        """Metrics on labeled data given like `fit`'s: accuracy, macro_f1, n, per-class numbers, confusion."""
        self._check_fitted()
        return self._score(self._align(self._load(data), self.classes_))

    # --- persistence ------------------------------------------------------------------------------------
    def save(self, path: str) -> str:
        """Write the bundle (zip of config.json + model.safetensors) atomically; returns the path."""
        self._check_fitted()
        extra = self._classical_saved[1] if getattr(self, "classical_", None) is not None else {}
        memory = self.memory_.to_tensors() if getattr(self, "memory_", None) is not None else {}
        return write_bundle(path, self._config(), {**self.model_.state_dict(), **extra, **memory},
                            backbone_files(self.model_.backbone))  # loading then needs no hub, cache or package

    def extend(self, data, method: str = "rehearsal", valid=None, old_data=None, out_dir: str | None = None,
               resume: str | None = None, **options) -> TransferEstimator:
        """Learn the new classes in `data` without forgetting the old (see methods/continual.py for the methods).
        `out_dir`: a checkpoint is written there after every epoch; `resume`: such a folder, to continue from."""
        self.last_extension_ = extend_estimator(self, data, ContinualSettings(method=method, **options),
                                                valid=valid, old_data=old_data, out_dir=out_dir, resume=resume)
        return self


class TextClassifier(TransferEstimator):
    """Text classification (task='classification') or multi-label tagging (task='multilabel')."""

    modality = "text"
    default_backbone = "minilm_l6"


class TextRegressor(TransferEstimator):
    """Text regression: one number per text, from a table of text,value."""

    modality = "text"
    default_task = "regression"
    default_backbone = "minilm_l6"


class ImageClassifier(TransferEstimator):
    """Image classification (task='classification') or multi-label tagging (task='multilabel')."""

    default_task = "classification"


class ImageRegressor(TransferEstimator):
    """Image regression: one number per image, from a CSV of path,value."""

    default_task = "regression"


def estimator_class(modality: str, task: str) -> type[TransferEstimator]:
    """The estimator for a modality and task, e.g. ("text", "regression") -> TextRegressor."""
    classes = {("image", False): ImageClassifier, ("image", True): ImageRegressor,
               ("text", False): TextClassifier, ("text", True): TextRegressor}
    key = (modality, task == "regression")
    if key not in classes:
        raise HeadstartError(f"no estimator for {modality} data; known: image, text")
    return classes[key]
