"""Few-shot learning: a prototype classifier on any backbone and SetFit-style tuning for text (the N-way K-shot
episode benchmark, `fewshot_eval`, is in episodes.py).

* `PrototypeHead`: each class is the mean of its examples' embeddings, centred on the mean of all support
  embeddings and L2-normalised ("CL2N", Wang et al. 2019, SimpleShot); an input goes to the class of highest cosine
  similarity. Nothing is trained, so one example per class is enough, and nothing can overfit. The prototypes and
  centre are buffers: the bundle holds them as tensors like any other weights.
* `contrastive_tune`: SetFit (Tunstall et al. 2022) for sentence encoders: pairs of labeled texts (same class ->
  cosine 1, different -> 0), squared error on their cosine similarity, here every pair within each batch; the head
  (prototypes, or `setfit`'s logistic regression) is then taken on the tuned embeddings.
* `fit_fewshot`: what `fit(strategy="fewshot")` and `fit(strategy="setfit")` run (and `auto` below a few examples
  per class, or for texts in the range where SetFit measured best: advisor.few_shot_advice).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from torch import nn

from .._runtime import adamw, seed_everything
from ..advisor import few_shot_advice
from ..backbone_choice import backbone_name, fit_image_size
from ..backbones import create_backbone, resolve_backbone
from ..budget import TUNING_SHARE, Labeled, Tools, spend_on_setfit
from ..checkpoint import Checkpointer
from ..data.labeled import LabeledData, stratified_split
from ..distributed import is_main_process
from ..errors import DataError, HeadstartError
from ..heads import HeadConfig, TransferModel, build_head
from ..inference import _device, _to, embed, run_over
from ..loop import LoopSettings, Resumable, WholeBatchObjective
from ..plan_runner import open_run_log
from ..probe import cross_validated_proba, fit_probe
from ..progress import say
from ..strategies import SetFit, get_strategy
from .classical import CLASSICAL_HEADS
from .fewshot_validation import checked_on, held_out_setfit, validate_on_every_label
from .run_checkpoints import tuning_checkpointer
from .text_finetune import finetune_encoder, tune_text_encoder

DEFAULT_SCALE = 10.0  # cosine in [-1, 1] times this: softmax probabilities neither flat nor saturated


class PrototypeHead(nn.Module):
    """Cosine similarity (times `scale`) between centred, normalised features and per-class prototypes."""

    kind = "prototype"  # the head kind the bundle's config records

    def __init__(self, in_dim: int, n_classes: int, scale: float = DEFAULT_SCALE) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(n_classes, in_dim))
        self.register_buffer("center", torch.zeros(in_dim))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x - self.center, dim=-1)

    @torch.no_grad()
    def set_prototypes(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Class means of the support features; every class needs at least one example."""
        features, labels = torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(labels).long()
        counts = torch.bincount(labels, minlength=len(self.prototypes))
        if (counts == 0).any():
            raise DataError(f"class {int((counts == 0).nonzero()[0])} has no example to build its prototype from")
        self.center.copy_(features.mean(0))
        sums = torch.zeros_like(self.prototypes).index_add_(0, labels, self._normalise(features))
        self.prototypes.copy_(nn.functional.normalize(sums / counts[:, None], dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self._normalise(x.float()) @ self.prototypes.T


def leave_one_out_scores(head: PrototypeHead, features: torch.Tensor, labels: torch.Tensor
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities for each training example from prototypes built without it (rows of classes with a single
    example cannot be scored and are left out): the honest validation number when every label went to training."""
    normed = head._normalise(features.float())
    n_classes = len(head.prototypes)
    sums = torch.zeros(n_classes, normed.shape[1]).index_add_(0, labels, normed)
    counts = torch.bincount(labels, minlength=n_classes).float()
    keep = counts[labels] > 1
    own = nn.functional.one_hot(labels, n_classes).float()
    # every prototype for every row, then the row's own class recomputed without the row itself
    means = (sums[None] - own[..., None] * normed[:, None]) / (counts[None, :, None] - own[..., None]).clamp(min=1)
    logits = head.scale * (nn.functional.normalize(means, dim=-1) @ normed[..., None]).squeeze(-1)
    return logits[keep].softmax(-1).numpy(), keep.numpy()


# --- SetFit-style contrastive tuning of a sentence encoder -------------------------------------------------------
# Texts a step. Every pair among them is scored: 496 pairs for 32 encodes, where SetFit's list of sampled pairs
# encodes two texts for each pair (16 pairs for up to 32 encodes). Tweets, 64 per class, MiniLM-L6, 600 test tweets:
# 4 passes of batches of 32 at 4e-5 scored 0.646 on training subsets 0-2 and 0.647 on subsets 3-7 (where it was
# chosen), against 0.633 / 0.634 for one pass of SetFit's pairs (two per text, batches of 16 pairs at 2e-5) in the
# same time, and 0.651 / 0.644 for SetFit itself (5 passes of pairs, 3.5x the time). Also tried: 6 passes 0.643 /
# 0.652, lr 8e-5 0.651 / 0.645; at 2e-5 0.639 (0-2), and 0.630 with positive and negative pairs weighted equally.
SETFIT_BATCH, SETFIT_LR = 32, 4e-5  # and strategies.SetFit.epochs, the passes: 4


def pair_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SetFit's objective (cosine similarity -> 1 for a same-class pair, 0 for any other, squared error) over every
    pair of the batch."""
    unit = nn.functional.normalize(embeddings, dim=-1)
    rows, cols = torch.triu_indices(len(labels), len(labels), 1, device=unit.device)
    cosine = (unit[rows] * unit[cols]).sum(-1)
    return nn.functional.mse_loss(cosine, (labels[rows] == labels[cols]).to(cosine.dtype))


class _PairObjective(WholeBatchObjective):
    """The loop's objective: `pair_loss` over every pair of the whole batch, every process's texts included."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, encoded: dict, labels: torch.Tensor) -> torch.Tensor:
        return pair_loss(self.gather(self.backbone(encoded)), self.gather(labels))


def contrastive_tune(backbone: nn.Module, texts: Sequence[str], labels: np.ndarray, *, epochs: int = SetFit.epochs,
                     lr: float = SETFIT_LR, batch_size: int = SETFIT_BATCH, seed: int = 0,
                     verbose: bool = True, deadline: float | None = None,
                     log: Callable[[dict], None] | None = None, mixed_precision: str = "no",
                     checkpointer: Checkpointer | None = None) -> list[dict]:
    """Fine-tune a text backbone so that same-class texts embed close (cosine -> 1), others apart (-> 0): `epochs`
    passes over the texts in shuffled batches, `pair_loss` on each. Returns one record per pass (mean loss), each
    also given to `log` as its pass ends (metrics.jsonl). No batch starts after `deadline` (a time.perf_counter()
    value: the estimator's time limit). With a `checkpointer`, a checkpoint is written after every pass, and one
    it loaded is resumed after its pass, to the weights an uninterrupted tuning ends with."""
    labels = torch.as_tensor(np.asarray(labels))
    rng, drawn = np.random.default_rng(seed), [0]

    def rows_of(epoch: int):
        # one permutation per pass, in order: a resumed tuning draws (and drops) those of the passes it skips
        while drawn[0] < epoch:
            order, drawn[0] = rng.permutation(len(texts)), drawn[0] + 1
        # batches of at most batch_size, of near-equal sizes: never a last batch of one text, which has no pair
        return np.array_split(order, -(-len(order) // batch_size))

    return tune_text_encoder(
        backbone, texts, labels, _PairObjective(backbone), [{"params": list(backbone.parameters())}], rows_of,
        stage="setfit", settings=LoopSettings("setfit", epochs, mixed_precision=mixed_precision, verbose=verbose,
                                              deadline=deadline),
        optimizer=lambda groups: adamw(groups, lr=lr), steps_per_epoch=-(-len(texts) // batch_size), log=log,
        resumable=None if checkpointer is None else Resumable(checkpointer))


# --- fit(strategy="fewshot") -------------------------------------------------------------------------------------
def fewshot_advice(est, full: LabeledData, unlabeled=None):
    """The advisor's few-shot rule, where it applies: `auto`, a torch head, classification, no target data."""
    if est.strategy != "auto" or unlabeled is not None or est._task != "classification" or est.head in CLASSICAL_HEADS:
        return None

    def estimate(passes: int) -> float:  # built only when the texts fall in setfit's range
        backbone = create_backbone(resolve_backbone(backbone_name(est), "text"),
                                   pretrained=est.pretrained)
        return estimate_setfit_seconds(backbone, full.items, passes, seed=est.seed)

    return few_shot_advice(full.class_counts(), est.modality, est.time_limit, est.head,
                           estimate if est.modality == "text" else None)


def estimate_setfit_seconds(backbone: nn.Module, texts: Sequence[str], passes: int, seed: int = 0,
                            batch_size: int = SETFIT_BATCH) -> float:
    """Seconds `setfit` would take on `texts`: tuning steps timed on batches drawn as contrastive_tune draws them
    (random texts at their real lengths; one untimed step first, then the median of two), times the steps of every
    pass, plus one forward pass over every text for the head (a third of a step). Weights are left as they were:
    gradients are computed, never applied."""
    device = _device()
    backbone.to(device).train()
    frozen = [p for p in backbone.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    rng = np.random.default_rng(seed)
    size = min(batch_size, len(texts))
    times = []
    with torch.enable_grad():
        for _ in range(3):
            rows = rng.choice(len(texts), size, replace=False)
            started = time.perf_counter()
            enc = backbone.tokenizer([texts[r] for r in rows], padding=True, truncation=True,
                                     max_length=backbone.spec.preprocess.max_length, return_tensors="pt")
            loss = pair_loss(backbone(_to(dict(enc), device)), torch.as_tensor(rows % 2, device=device))
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            backbone.zero_grad(set_to_none=True)
    for p in frozen:
        p.requires_grad_(False)
    backbone.eval()
    steps = -(-len(texts) // batch_size)
    return float(np.median(times[1:])) * steps * (passes + 1 / 3)


def fit_fewshot(est, full: LabeledData, valid, started: float, advice=None, unlabeled=None, resume=None):
    """`fewshot`: prototypes on the frozen (or, for text, contrastively tuned) backbone; `setfit` (texts): the
    tuned encoder with a logistic-regression head (probe.py). Both use every labeled example. With `out_dir`, the
    run folder holds what every strategy's does (run_outputs.write_run_outputs), and the contrastive tuning of
    texts writes a checkpoint under `out_dir/checkpoint/` after every pass: `resume=DIR` continues it from its last
    finished pass to the encoder an uninterrupted run ends with. That is the plain tuning (`setfit` or `fewshot`
    on texts) only: `quality="best"` spends its budget over several tunings (budget.spend_on_setfit) and refuses
    `resume`, as do prototypes on images (nothing trains).

    With no `valid` set, the validation metrics are leave-one-out (prototypes) or cross-validated (setfit) on the
    tuned embeddings: with few labels, holding examples out would cost more than it tells, but the encoder has seen
    those labels, so the numbers are optimistic and say so. `est.epochs` sets the tuning passes of `fewshot`.
    """
    from ..run_outputs import write_run_outputs  # the report's plotting (matplotlib) loads only when a run writes one

    name = advice.strategy if advice is not None else est.strategy
    budgeted = name == "setfit" and est.quality == "best"  # several tunings, raced: not checkpointed
    # refused, never ignored: the caller would believe the run went on from where it stopped
    if resume and (budgeted or est.modality != "text"):
        why = "spends its time budget over several tunings" if budgeted else "computes prototypes in one pass"
        raise HeadstartError(f"strategy '{name}'{' (chosen by auto)' if advice is not None else ''} {why} and has "
                             "nothing to resume; run it again without --resume")
    if est._task != "classification":
        raise HeadstartError(f"strategy '{name}' classifies; for {est._task} use 'features' or 'two-stage'")
    if unlabeled is not None:
        raise HeadstartError(f"strategy '{name}' does not adapt to unlabeled target data; use strategy 'features' "
                             "(or 'auto') with unlabeled=")
    if name == "setfit" and (est.modality != "text" or est.head != "linear"):
        raise HeadstartError("strategy 'setfit' tunes a sentence encoder and solves a linear head: use it with "
                             "texts and head='linear' (for images, try 'fewshot' or 'auto')")
    if advice is not None:  # the backbone choice's reasons, first among them, were said as it chose
        choice = getattr(est, "backbone_choice_", None)
        for line in advice.reasons[len(choice.reasons) if choice is not None else 0:]:
            say(est.verbose, f"auto: {line}")
    seed_everything(est.seed)
    est.classes_ = list(full.classes)
    # the validation set given, read once (and before minutes of tuning): the checks and the metrics use it
    valid = None if valid is None else est._align(est._load(valid), est.classes_)
    spec = resolve_backbone(backbone_name(est), est.modality)
    backbone = create_backbone(spec, pretrained=est.pretrained, image_size=fit_image_size(est))
    setfit = get_strategy("setfit", **(advice.options if advice is not None else {})) if name == "setfit" else None
    passes = setfit.epochs if setfit is not None else max(1, est.epochs)
    say(est.verbose, f"data: {len(full)} labeled {est._modality.noun}, {len(est.classes_)} classes, smallest "
        f"{min(full.class_counts().values())}; strategy {name}: "
        + ("contrastive tuning, then a logistic-regression head" if setfit else "prototypes") + f" on {spec.name}")
    est.history_, tuned = [], est.modality == "text"
    # `setfit` with no validation set holds a fifth out, so its validation figures are out of sample: the encoder is
    # tuned and the head solved on the rest, the held-out rows scored (and raced against the no-transfer model
    # under `auto`), then the head is solved again on every row, as the probe's refit does.
    split = stratified_split(full, est.val_fraction, est.seed) if setfit is not None and valid is None else None
    tune_rows = split[0] if split is not None else np.arange(len(full))
    ckpt: Checkpointer | None = None
    tuning = time.perf_counter()  # the candidate's own time starts here (the advisor's measurements are before)
    log = open_run_log(est.out_dir, is_main_process())
    if tuned:  # SetFit: the labels reshape the embedding itself before the head is fitted on it
        tune = partial(contrastive_tune, verbose=est.verbose, log=log, mixed_precision=est.mixed_precision)
        tune_set = Labeled([full.items[i] for i in tune_rows], full.targets[tune_rows])
        if setfit is not None and est.quality == "best":  # spend the budget where held-out rows show a gain
            held_out = checked_on(est, full, split, valid)
            finetune = partial(finetune_encoder, lr=est.lr, verbose=est.verbose, n_classes=len(est.classes_),
                               mixed_precision=est.mixed_precision)
            tools = Tools(tune, estimate_setfit_seconds, log, finetune)
            backbone, est.history_, passes = spend_on_setfit(est, backbone, tune_set, held_out, passes, started,
                                                             advice, tools)
        else:
            ckpt = tuning_checkpointer(est, resume, full, split, valid, passes, log)
            est.history_ = tune(backbone, tune_set.items, tune_set.targets, epochs=passes, seed=est.seed,
                                deadline=None if est.time_limit is None else started + TUNING_SHARE * est.time_limit,
                                checkpointer=ckpt)
        feats, ok = run_over(backbone, full.items, est.batch_size, est.num_workers, est.verbose)
    else:
        feats, ok = embed(backbone, full.items, batch_size=est.batch_size, num_workers=est.num_workers,
                          use_cache=est.use_cache, cache_dir=est.cache_dir, verbose=est.verbose)
    x, y = torch.as_tensor(feats[ok]), torch.as_tensor(full.targets[ok])
    if setfit is not None:
        head = build_head(HeadConfig(kind="linear"), backbone.feature_dim, len(est.classes_)).eval()
        fit_rows = np.isin(np.flatnonzero(ok), tune_rows)  # rows of x the head may be fitted on
        solving = time.perf_counter()
        chosen = fit_probe(head, x[fit_rows], y[fit_rows], len(est.classes_), est.seed)
        est.history_.append({"stage": "head", "epoch": 1, "solver": "logistic regression (L-BFGS)", "probe": chosen,
                             "seconds": round(time.perf_counter() - solving, 3)})
        if log is not None:
            log(est.history_[-1])
        if split is None:
            scored = cross_validated_proba(x, y, len(est.classes_), chosen, est.seed)
            how = {"cross_validated": True}
    else:
        head = PrototypeHead(backbone.feature_dim, len(est.classes_))
        head.set_prototypes(x, y)
        scored, how = leave_one_out_scores(head, x, y), {"leave_one_out": True}
    est.model_ = TransferModel(backbone, head).eval()
    est.spec_, est.backbone_trained_, est.classical_ = backbone.spec, tuned, None
    est.memory_, est.continual_ = None, None
    # `best` may ship an encoder tuned by the Trainer's recipe (stage "finetune") rather than SetFit's
    tuned_by = next((r["stage"] for r in est.history_ if r["stage"] != "head"), "setfit")
    stages = [{"name": tuned_by, "epochs": passes}] if tuned else [{"name": "prototypes", "epochs": 0}]
    est.strategy_ = {"name": name, "stages": stages + ([{"name": "head", "epochs": 1}] if setfit else [])}
    est.advice_ = advice
    if split is not None:
        val, val_scores = held_out_setfit(est, full, split, (x, y, np.flatnonzero(ok)), fit_rows, chosen,
                                           (started, tuning))
    else:
        val, val_scores = validate_on_every_label(est, full, valid, ok, scored, how, started)
    if est.out_dir and is_main_process():  # one writer, as in estimator.fit
        write_run_outputs(est, val, val_scores)
    if ckpt is not None:
        ckpt.remove()  # the bundle now holds the tuned encoder
    return est
