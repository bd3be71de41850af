"""The backbone contract: inputs -> pooled feature vector, parameters split into named layer groups (how each
kind of model is split: grouping.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
POOLINGS = ("mean", "cls", "pooler")
# Bounds on what a bundle's JSON may ask of every input: an edited size of a million pixels a side would make the
# first prediction allocate terabytes. Far above any real model's (ImageNet models: 224-600 px; long-context text
# encoders: 512-8,192 tokens).
MAX_IMAGE_SIZE = 4096
MAX_TEXT_TOKENS = 16384


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image becomes the tensor a backbone was trained on: resize, centre crop, normalise."""

    size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 8 <= self.size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image size {self.size!r} is out of range (8 to {MAX_IMAGE_SIZE} pixels)")
        if not isinstance(self.crop_pct, (int, float)) or not 0.05 <= self.crop_pct <= 1:
            raise ValueError(f"crop_pct {self.crop_pct!r} is out of range (0.05 to 1)")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise ValueError(f"mean and std need 3 numbers each, std above 0 (got {self.mean!r}, {self.std!r})")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}")

    @property
    def resize(self) -> int:
        """Shorter side before the centre crop."""
        return int(round(self.size / self.crop_pct))

    def with_size(self, size: int | None) -> ImagePreprocess:
        return self if size is None else dataclasses.replace(self, size=int(size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImagePreprocess:
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


@dataclass(frozen=True)
class TextPreprocess:
    """How a text becomes token ids, and how token states become one vector (the model's own pooling)."""

    max_length: int = 128
    pooling: str = "mean"  # mean | cls | pooler
    normalize: bool = False

    def __post_init__(self) -> None:
        # 0: no tokenizer truncates (the TF-IDF baseline reads whole texts)
        if not isinstance(self.max_length, int) or not 0 <= self.max_length <= MAX_TEXT_TOKENS:
            raise ValueError(f"max_length {self.max_length!r} is out of range (0 to {MAX_TEXT_TOKENS} tokens)")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TextPreprocess:
        return cls(**d)


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: where a backbone comes from and how to feed it.

    `source` picks the builder (packaged, timm, torchvision, hf, local); `arch` is what that builder takes (a
    timm or torchvision model name, a Hugging Face id, a path). `offline` says the weights ship inside an
    installed package, so the backbone works with no network.
    """

    name: str
    source: str
    arch: str
    modality: str = "image"
    preprocess: ImagePreprocess | TextPreprocess = field(default_factory=ImagePreprocess)
    feature_dim: int | None = None
    description: str = ""
    offline: bool = False
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BackboneSpec:
        d = dict(d)
        kind = TextPreprocess if d.get("modality") == "text" else ImagePreprocess
        d["preprocess"] = kind.from_dict(d["preprocess"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})



class Backbone(nn.Module):
    """A pretrained network with its top removed.

    `forward(x)` returns pooled features of shape (batch, feature_dim). `layer_groups()` lists the named parameter
    groups from input to output (stem, stages, final): the unit strategies freeze, unfreeze and give learning
    rates to. Every trainable parameter belongs to exactly one group.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        body: nn.Module,
        feature_dim: int,
        group_of: Callable[[str], str],
        group_order: list[str],
        source_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.body = body
        # Convolutions run 2-3x faster in channels-last layout on CPU (oneDNN), measured: EfficientNet-Lite0
        # inference 268 -> 822 images/s at 64 px, 25 -> 48 at 224 px; fine-tuning 1.3-1.4x. Same values to 1e-5.
        self._channels_last = spec.modality == "image"
        if self._channels_last:
            for t in [*body.parameters(), *body.buffers()]:
                if t.dim() == 4:
                    t.data = t.data.contiguous(memory_format=torch.channels_last)
        self.feature_dim = int(feature_dim)
        names = [n for n, _ in body.named_parameters()]
        assigned = {n: group_of(n) for n in names}
        self._group_names = [g for g in group_order if g in set(assigned.values())]
        missing = sorted(set(assigned.values()) - set(self._group_names))
        if missing:
            raise ValueError(f"{spec.name}: layer groups {missing} are not in the group order")
        self._param_group = assigned
        # Kept outside the module tree: the source task's classifier is not part of the transferred model and
        # must not be trained or saved, but it serves sanity checks (and LEEP) while the backbone is fresh.
        self._source_head = (source_head,) if source_head is not None else ()
        self.tokenizer = None  # text backbones: turns strings into the body's inputs
        self.cache_features = True  # False where computing features costs less than storing them (scratch.py)
        self._weights_id: tuple | None = None  # (tensor versions, hash), see weights_id()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)

    def group_names(self) -> list[str]:
        return list(self._group_names)

    def layer_groups(self) -> dict[str, list[nn.Parameter]]:
        groups: dict[str, list[nn.Parameter]] = {g: [] for g in self._group_names}
        for n, p in self.body.named_parameters():
            groups[self._param_group[n]].append(p)
        return groups

    def modules_in_groups(self, groups: Iterable[str]) -> list[nn.Module]:
        """Leaf modules whose parameters all lie in the given groups (used to keep frozen BatchNorm in eval)."""
        wanted = set(groups)
        found = []
        for name, module in self.body.named_modules():
            params = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
            if params and all(self._param_group[p] in wanted for p in params):
                found.append(module)
        return found

    @property
    def source_head(self) -> nn.Module | None:
        return self._source_head[0] if self._source_head else None

    def source_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the source task (e.g. ImageNet), where the pretrained classifier is known."""
        if self.source_head is None:
            raise ValueError(f"backbone {self.spec.name} has no source classifier")
        return self.source_head(self.forward(x))

    def weights_id(self) -> str:
        """A hash of the weights: part of the feature-cache key, so new weights never reuse old features.

        Hashing every weight costs more than a whole cached lookup, so the hash is kept until a tensor changes:
        torch bumps a tensor's `_version` on every in-place write (optimizer steps, load_state_dict, add_).
        """
        state = self.state_dict(keep_vars=True)
        versions = tuple((name, t._version, t.data_ptr()) for name, t in state.items())
        if self._weights_id is not None and self._weights_id[0] == versions:
            return self._weights_id[1]
        h = hashlib.sha256()
        for name, t in sorted(state.items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        self._weights_id = (versions, h.hexdigest()[:16])
        return self._weights_id[1]


@contextlib.contextmanager
def files_folder(files: dict[str, bytes]) -> Iterator[str]:
    """A backbone's files from its bundle (name -> bytes) in a temporary folder, for transformers, which reads
    configs and tokenizers from folders; removed on exit. The names are plain file names (bundle.py refuses others)."""
    with tempfile.TemporaryDirectory(prefix="headstart-backbone-") as folder:
        for name, data in files.items():
            with open(os.path.join(folder, os.path.basename(name)), "wb") as f:
                f.write(data)
        yield folder
