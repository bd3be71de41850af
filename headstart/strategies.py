"""Strategies: which layer groups train, at which learning rate, in which stage.

A strategy only plans; the trainer carries the plan out. A stage whose only trainable group is the head runs on
cached features (the backbone is never run twice on the same image). Learning rates are given per group name,
never by child index, so a plan reads the same for every backbone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import HeadstartError

HEAD = "head"
LORA = "lora"


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    lrs: dict[str, float] = field(default_factory=dict)  # group -> learning rate; groups left out stay frozen
    reinit: tuple[str, ...] = ()  # groups re-initialised before the stage (new upper layers, trained from scratch)
    lora: dict | None = None  # LoRA settings: adapters injected for the stage, trained at lrs[LORA], then merged
    batch_size: int | None = None  # training batches of a backbone stage (at most the estimator's); None: its own

    @property
    def backbone_frozen(self) -> bool:
        return set(self.lrs) == {HEAD}

    def train_batch(self, cap: int) -> int:
        """The stage's training batch size: its own if it has one, never above `cap` (the estimator's)."""
        return min(cap, self.batch_size or cap)

    def to_dict(self) -> dict:
        return asdict(self)


def _discriminative(groups: list[str], top_lr: float, spread: float) -> dict[str, float]:
    """Geometric learning rates: `top_lr` for the last group down to `top_lr / spread` for the first."""
    n = len(groups)
    if n == 1:
        return {groups[0]: top_lr}
    return {g: top_lr * spread ** (-(n - 1 - i) / (n - 1)) for i, g in enumerate(groups)}


@dataclass(frozen=True)
class Features:
    """Frozen backbone: features computed once (and cached), only the head trains. Fast, hard to overfit."""

    name: str = "features"

    def plan(self, groups: list[str], epochs: int, lr: float, head_epochs: int) -> list[Stage]:
        return [Stage("head", head_epochs, {HEAD: lr})]


@dataclass(frozen=True)
class Finetune:
    """The last `last_n` layer groups train with the head; earlier, more generic groups stay frozen."""

    last_n: int = 2
    backbone_lr_scale: float = 0.1
    name: str = "finetune"

    def plan(self, groups: list[str], epochs: int, lr: float, head_epochs: int) -> list[Stage]:
        if self.last_n < 1:
            raise HeadstartError("finetune needs last_n >= 1 (use strategy 'features' to train the head only)")
        top = groups[-self.last_n :]
        return [Stage("finetune", epochs, {HEAD: lr, **{g: lr * self.backbone_lr_scale for g in top}})]


@dataclass(frozen=True)
class Full:
    """Every layer trains. `backbone_lr_scale=1` is training from scratch's setting."""

    backbone_lr_scale: float = 0.1
    finetune_batch_size: int | None = None  # `auto`: 8 for texts, at rate 0.05 (advisor.TEXT_FINETUNE says why)
    name: str = "full"

    def plan(self, groups: list[str], epochs: int, lr: float, head_epochs: int) -> list[Stage]:
        return [Stage("full", epochs, {HEAD: lr, **{g: lr * self.backbone_lr_scale for g in groups}},
                      batch_size=self.finetune_batch_size)]


@dataclass(frozen=True)
class TwoStage:
    """Linear probe on frozen (cached) features, then fine-tune everything from it with discriminative rates.

    Starting the fine-tune from a trained head keeps random head gradients from wrecking pretrained features
    (Kumar et al., 2022, LP-FT); lower rates for earlier, more generic groups follow fastai's `fine_tune`.
    """

    backbone_lr_scale: float = 0.1
    spread: float = 10.0
    finetune_batch_size: int | None = None  # the fine-tune's batches, when they should be smaller than the estimator's
    name: str = "two-stage"

    def plan(self, groups: list[str], epochs: int, lr: float, head_epochs: int) -> list[Stage]:
        ft_lr = lr * self.backbone_lr_scale
        return [
            Stage("head", head_epochs, {HEAD: lr}),
            Stage("finetune", epochs, {HEAD: ft_lr, **_discriminative(groups, ft_lr, self.spread)},
                  batch_size=self.finetune_batch_size),
        ]


@dataclass(frozen=True)
class Truncate:
    """For targets unlike the source: keep the early, generic groups frozen, re-initialise the later, source-
    specific groups and train them (and the head) from scratch. `keep` = how many groups to keep (default: the
    first half, rounded up)."""

    keep: int | None = None
    name: str = "truncate"

    def plan(self, groups: list[str], epochs: int, lr: float, head_epochs: int) -> list[Stage]:
        keep = self.keep if self.keep is not None else (len(groups) + 1) // 2
        if not 1 <= keep < len(groups):
            raise HeadstartError(f"truncate keeps between 1 and {len(groups) - 1} of the {len(groups)} layer groups")
        upper = tuple(groups[keep:])
        return [Stage("truncate", epochs, {HEAD: lr, **{g: lr for g in upper}}, reinit=upper)]


@dataclass(frozen=True)
class Lora:
    """Linear probe, then low-rank adapters (peft's LoRA) on the backbone's projections, merged back afterwards.

    Trains ~1% of the weights: cheaper optimiser state, and less forgetting of what the source taught. The
    bundle holds the merged weights, so it loads and predicts like any other.
    """

    r: int = 8
    alpha: int = 16
    name: str = "lora"

    def plan(self, groups: list[str], epochs: int, lr: float, head_epochs: int) -> list[Stage]:
        return [
            Stage("head", head_epochs, {HEAD: lr}),
            Stage("lora", epochs, {HEAD: lr * 0.1, LORA: lr}, lora={"r": self.r, "alpha": self.alpha}),
        ]


@dataclass(frozen=True)
class FewShot:
    """For a few examples per class: class prototypes of the frozen features, or for text, of a sentence encoder
    first tuned SetFit-style on pairs of the labeled texts. No stages to plan: `fit` hands it to methods/fewshot.py."""

    name: str = "fewshot"

    def plan(self, groups: list[str], epochs: int, lr: float, head_epochs: int) -> list[Stage]:
        return []


@dataclass(frozen=True)
class SetFit:
    """Texts: tune the sentence encoder on pairs of the labeled texts (SetFit, Tunstall et al. 2022), then solve a
    logistic-regression head on the tuned embeddings; every label is used for both. `epochs`: passes over the texts,
    each batch's every pair scored. methods/fewshot.py carries it out (and says why 4)."""

    epochs: int = 4
    name: str = "setfit"

    def plan(self, groups: list[str], epochs: int, lr: float, head_epochs: int) -> list[Stage]:
        return []


@dataclass(frozen=True)
class Baseline:
    """No transfer: the same solved linear head on the raw inputs (grey pixels, or TF-IDF fitted on the training
    texts; backbones/scratch.py) instead of pretrained features. `auto` races its transferred model against it on
    validation and ships this one when it wins (race.py)."""

    name: str = "baseline"

    def plan(self, groups: list[str], epochs: int, lr: float, head_epochs: int) -> list[Stage]:
        return [Stage("head", head_epochs, {HEAD: lr})]


STRATEGIES = {"features": Features, "finetune": Finetune, "full": Full, "two-stage": TwoStage, "truncate": Truncate,
              "lora": Lora, "fewshot": FewShot, "setfit": SetFit,
              "baseline": Baseline}


def get_strategy(name: str, **options) -> (Features | Finetune | Full | TwoStage | Truncate | Lora | FewShot | SetFit
                                          | Baseline):
    """A strategy by name; options not taken by it (e.g. last_n for full) are ignored."""
    if name not in STRATEGIES:
        raise HeadstartError(f"unknown strategy '{name}': choose one of {', '.join(STRATEGIES)}")
    cls = STRATEGIES[name]
    fields = cls.__dataclass_fields__
    return cls(**{k: v for k, v in options.items() if k in fields and k != "name" and v is not None})
