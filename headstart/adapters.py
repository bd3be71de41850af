"""LoRA adapters through Hugging Face peft: a small config, injected into a backbone's body, merged back at the end.

Why LoRA: on small data it trains ~1% of the parameters, so it overfits less than full fine-tuning and its optimizer
state is tiny, yet it adapts every layer it touches. Why merge: the saved model is then a plain backbone, with the
exact parameter names and shapes of a never-injected one, so bundles stay adapter-free and reload strictly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from .errors import HeadstartError

# Attention projections by the names the common encoders give them (BERT/RoBERTa/ViT-HF; LLaMA-style; T5/MPNet;
# DistilBERT). LoRA on these alone is the original paper's recipe and the cheapest one that works.
ATTENTION_NAMES = frozenset(
    {"query", "key", "value", "q_proj", "k_proj", "v_proj", "q", "k", "v", "q_lin", "k_lin", "v_lin"}
)
LORA_MARKER = "lora_"  # peft names every adapter parameter lora_A / lora_B / lora_embedding_*


@dataclass(frozen=True)
class LoraSettings:
    """What LoRA changes: rank `r`, scale `alpha / r`, dropout on the adapter input, and which layers (None: auto)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.r < 1:
            raise HeadstartError(f"LoRA rank r must be at least 1, not {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise HeadstartError(f"LoRA dropout must be in [0, 1), not {self.dropout}")
        if self.target_modules is not None:  # JSON gives lists; keep the dataclass hashable
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules) if self.target_modules is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LoraSettings:
        return cls(**d)


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def default_lora_targets(module: nn.Module) -> list[str]:
    """Full names of the layers LoRA should adapt when the user named none.

    In order of preference: attention query/key/value projections (transformer encoders); else every Linear layer
    (e.g. timm ViT's fused `qkv`, `proj`, `fc1`, `fc2`); else, for conv nets, the 1x1 ungrouped Conv2d layers, which
    carry most of a mobile net's weights and are exactly a Linear over channels. Full names, not leaf suffixes, so a
    `key` in one place cannot silently match a different kind of layer elsewhere.
    """
    named = list(module.named_modules())
    linears = [n for n, m in named if isinstance(m, nn.Linear)]
    attention = [n for n in linears if _leaf(n) in ATTENTION_NAMES]
    if attention:
        return attention
    if linears:
        return linears
    pointwise = [n for n, m in named if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and m.groups == 1]
    if pointwise:
        return pointwise
    raise HeadstartError(
        f"no layer suited to LoRA in {type(module).__name__} (no Linear or 1x1 Conv2d): name target_modules explicitly"
    )


def inject_lora(backbone: nn.Module, settings: LoraSettings) -> None:
    """Wrap `backbone.body` with peft LoRA adapters; afterwards only the adapters' parameters require grad.

    The body's parameter names change while injected (peft prefixes `base_model.model.` and moves each adapted
    weight under `.base_layer`); `merge_lora` restores them. Build the optimizer after this call.
    """
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import check_target_module_exists

    body = backbone.body
    if is_lora_injected(backbone):
        raise HeadstartError("this backbone already has LoRA adapters: merge_lora() it before injecting again")
    targets = list(settings.target_modules) if settings.target_modules is not None else default_lora_targets(body)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets)
    # Check before peft touches the body, so a bad name leaves the backbone exactly as it was.
    matched = [n for n, _ in body.named_modules() if n and check_target_module_exists(config, n) is True]
    if not matched:
        shown = ", ".join(targets[:5]) + (", ..." if len(targets) > 5 else "")
        raise HeadstartError(f"LoRA target_modules ({shown}) match no layer of {type(body).__name__}")
    try:
        backbone.body = get_peft_model(body, config)
    except (ValueError, TypeError) as err:  # e.g. a matched module of a type LoRA cannot wrap
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HeadstartError(f"cannot add LoRA to {type(body).__name__}: {first}") from None


def is_lora_injected(backbone: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(backbone.body, PeftModel)


def lora_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters: what the optimizer should get while LoRA is injected."""
    return [p for n, p in backbone.body.named_parameters() if LORA_MARKER in n]


def merge_lora(backbone: nn.Module) -> None:
    """Fold the adapters into the base weights (W += B A * alpha / r) and put the plain body back.

    After this `backbone.state_dict()` has exactly the keys it had before `inject_lora`. All body parameters are
    left with requires_grad=False (peft froze them at injection): LoRA training is over, the merged body is frozen.
    """
    if not is_lora_injected(backbone):
        raise HeadstartError("this backbone has no LoRA adapters to merge")
    # safe_merge checks the merged weights for NaN/inf before overwriting the originals.
    backbone.body = backbone.body.merge_and_unload(safe_merge=True)
