"""Self-supervised pre-training on the user's unlabeled data, before fine-tuning on the few labels they have.

- Images: SimCLR (Chen et al. 2020). Two augmented views of each image go through the backbone and a small
  projection MLP; the NT-Xent loss pulls the two views of one image together and pushes the other images of the
  batch away. The projection MLP is thrown away afterwards, as in the paper.
- Texts: masked language modelling on the encoder (domain-adaptive pre-training, Gururangan et al. 2020). The
  encoder is wrapped in transformers' `AutoModelForMaskedLM` with `DataCollatorForLanguageModeling` masking 15%
  of the tokens. Sentence encoders such as the packaged all-MiniLM-L6-v2 ship without an MLM head, so that head
  (transform + decoder bias; the decoder weights are tied to the word embeddings) starts untrained.

The result is a bundle folder (`config.json` + `model.safetensors`, backbone weights only) that
`fit --backbone DIR` and `hs.ImageClassifier(backbone=DIR)` accept like any other bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import save
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from .._runtime import adamw, keeps_callers_rng, seed_everything
from .._version import __version__
from ..backbones import Backbone, backbone_files, create_backbone, resolve_backbone
from ..bundle import CONFIG, FILES, FORMAT, FORMAT_VERSION, WEIGHTS
from ..cache import write_atomic
from ..checkpoint import Checkpointer
from ..data.images import _check_all
from ..distributed import is_main_process
from ..errors import DataError, HeadstartError
from ..loop import LoopSettings, Resumable, WholeBatchObjective, run_loop
from ..modalities import MODALITIES
from ..progress import say


@dataclass(frozen=True)
class PretrainSettings:
    epochs: int = 5
    lr: float | None = None  # default: 1e-3 for SimCLR, 5e-5 for masked LM
    batch_size: int = 64
    temperature: float = 0.2  # NT-Xent
    projection_dim: int = 128
    mask_probability: float = 0.15
    max_length: int = 64
    image_size: int | None = None
    limit: int | None = None  # use at most this many unlabeled inputs
    num_workers: int = 0  # image decoding + augmentation processes (SimCLR is input-bound on a GPU)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# --- images: SimCLR ------------------------------------------------------------------------------------------
def simclr_augment(size: int, mean, std):
    """SimCLR's augmentations, scaled for small images: crop, flip, colour jitter, greyscale."""
    from torchvision.transforms import v2 as T

    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True), T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
        T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std),
    ])


class TwoViews(Dataset):
    """Two independent augmentations of each image; unreadable images are left out before (`pretrain`)."""

    def __init__(self, paths: list[str], augment) -> None:
        self.paths, self.augment = paths, augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            rgb = img.convert("RGB")
        return self.augment(rgb), self.augment(rgb)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner out of the 2N-1 other views in the batch."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own positive
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, partner)


class _SimCLRObjective(WholeBatchObjective):
    """The loop's objective: NT-Xent over the views of the whole batch, every process's rows included."""

    def __init__(self, backbone: Backbone, projector: nn.Module, temperature: float) -> None:
        super().__init__()
        self.backbone, self.projector, self.temperature = backbone, projector, temperature

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.backbone(v1)), self.projector(self.backbone(v2))
        return nt_xent(self.gather(z1), self.gather(z2), self.temperature)


def _resumable(checkpointer: Checkpointer | None, loader: DataLoader) -> Resumable | None:
    return None if checkpointer is None else Resumable(checkpointer, loader.generator)


def _row_weighted(record: dict) -> float:
    """An epoch's mean loss, each batch weighted by its rows."""
    total, seen = 0.0, 0
    for loss, rows in zip(record["loss"], record["rows"]):
        total, seen = total + loss * rows, seen + rows
    return total / max(seen, 1)


def pretrain_images(backbone: Backbone, paths: list[str], settings: PretrainSettings, verbose: bool,
                    checkpointer: Checkpointer | None = None) -> list[float]:
    pre = backbone.spec.preprocess
    dim = backbone.feature_dim
    projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, settings.projection_dim))
    loader = DataLoader(TwoViews(paths, simclr_augment(pre.size, pre.mean, pre.std)), batch_size=settings.batch_size,
                        shuffle=True, drop_last=len(paths) > settings.batch_size, num_workers=settings.num_workers,
                        generator=torch.Generator().manual_seed(settings.seed),
                        persistent_workers=settings.num_workers > 0)
    params = [*backbone.parameters(), *projector.parameters()]
    result = run_loop(_SimCLRObjective(backbone, projector, settings.temperature), [{"params": params}],
                      lambda _epoch: iter(loader), LoopSettings("SimCLR", settings.epochs, verbose=verbose),
                      optimizer=lambda groups: adamw(groups, lr=settings.lr or 1e-3, weight_decay=1e-4),
                      scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
                          opt, T_max=max(1, settings.epochs * len(loader))),
                      steps_per_epoch=len(loader), resumable=_resumable(checkpointer, loader))
    losses = [_row_weighted(record) for record in result.epochs]
    backbone.eval().cpu()
    return losses


class _MaskedLMObjective(nn.Module):
    """The loop's objective: the masked-LM loss of a collated batch (token ids, masks, labels)."""

    def __init__(self, mlm: nn.Module) -> None:
        super().__init__()
        self.mlm = mlm

    def forward(self, batch: dict) -> torch.Tensor:
        return self.mlm(**batch).loss


# --- texts: masked language modelling --------------------------------------------------------------------------
def pretrain_texts(backbone: Backbone, texts: list[str], settings: PretrainSettings, verbose: bool,
                   checkpointer: Checkpointer | None = None) -> list[float]:
    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

    encoder = backbone.body.model
    mlm = AutoModelForMaskedLM.from_config(encoder.config)
    base = getattr(mlm, mlm.base_model_prefix)
    # The encoder's weights go into the MLM model's base; its pooler (if any) has no place there and stays as is.
    missing, _ = base.load_state_dict(encoder.state_dict(), strict=False)
    if missing:
        raise HeadstartError(f"backbone {backbone.spec.name}: {len(missing)} encoder weights do not fit the masked-LM "
                             f"model (first: {missing[0]}); choose a BERT-style text encoder")
    mlm.tie_weights()
    collator = DataCollatorForLanguageModeling(backbone.tokenizer, mlm_probability=settings.mask_probability)
    encoded = backbone.tokenizer(texts, truncation=True, max_length=settings.max_length)
    rows = [{"input_ids": ids} for ids in encoded["input_ids"]]
    loader = DataLoader(rows, batch_size=settings.batch_size, shuffle=True, collate_fn=collator,
                        generator=torch.Generator().manual_seed(settings.seed))
    params = list(mlm.parameters())
    result = run_loop(_MaskedLMObjective(mlm), [{"params": params}], lambda _epoch: ((batch,) for batch in loader),
                      LoopSettings("masked LM", settings.epochs, grad_clip=1.0, verbose=verbose),
                      optimizer=lambda groups: adamw(groups, lr=settings.lr or 5e-5, weight_decay=0.01),
                      scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
                          opt, T_max=max(1, settings.epochs * len(loader))),
                      steps_per_epoch=len(loader), resumable=_resumable(checkpointer, loader))
    # the mean over batches, each counted once (as before: a batch's loss is already a mean over its masked tokens)
    losses = [sum(r["loss"]) / max(len(r["loss"]), 1) for r in result.epochs]
    encoder.load_state_dict(base.cpu().state_dict(), strict=False)
    return losses


# --- the entry point -------------------------------------------------------------------------------------------
@keeps_callers_rng  # seeds the global generators; the caller's own random draws must not notice
def pretrain(unlabeled, backbone: str | None = None, out: str = "runs/pretrained", modality: str = "image",
             settings: PretrainSettings | None = None, pretrained: bool = True, verbose: bool = True,
             resume: bool = False) -> str:
    """Continue training `backbone` on unlabeled inputs (image folder; text file, table or folder of .txt files);
    write it as a bundle folder at `out` and return that path, for `fit --backbone out`.

    A checkpoint is written under `out/checkpoint/` after every epoch (and removed once the bundle is written);
    `resume=True` continues an interrupted run from it, with the same options and inputs, to the same weights."""
    settings = settings or PretrainSettings()
    seed_everything(settings.seed)
    if modality not in ("image", "text"):
        raise HeadstartError(f"pretrain works on images or texts, not '{modality}'")
    spec = resolve_backbone(backbone or ("minilm_l6" if modality == "text" else "efficientnet_lite0"), modality)
    if spec.modality != modality:
        raise HeadstartError(f"backbone '{spec.name}' is for {spec.modality}s, not {modality}s")
    model = create_backbone(spec, pretrained=pretrained,
                            image_size=settings.image_size if modality == "image" else None)
    inputs = MODALITIES[modality].list_inputs([unlabeled] if isinstance(unlabeled, (str, os.PathLike))
                                              else list(unlabeled))
    if modality == "text":  # a .txt file that is not UTF-8 (or not a regular file) reads as "": counted, as fit does
        usable = [t for t in inputs if t.strip()]
        if len(usable) < len(inputs):
            say(verbose, f"skipped {len(inputs) - len(usable)} empty or unreadable (not UTF-8) text(s) in {unlabeled}")
        inputs = usable
    else:  # as `fit` does: unreadable files (corrupt, truncated, decompression bombs) are skipped and counted
        readable = [p for p, why in zip(inputs, _check_all(inputs)) if why is None]
        if len(readable) < len(inputs):
            say(verbose, f"skipped {len(inputs) - len(readable)} unreadable image(s) in {unlabeled}")
        inputs = readable
    if settings.limit:
        inputs = inputs[: settings.limit]
    if len(inputs) < 2:
        raise DataError(f"{unlabeled}: {len(inputs)} usable unlabeled input(s); pre-training needs many (hundreds+)")
    say(verbose, f"pretrain {spec.name} on {len(inputs)} unlabeled {modality}s "
        f"({'SimCLR' if modality == 'image' else 'masked LM'}, {settings.epochs} epochs)")
    started = time.perf_counter()
    run = pretrain_images if modality == "image" else pretrain_texts
    checkpointer = Checkpointer(out, {"pretrain": settings.to_dict(), "backbone": spec.name, "modality": modality,
                                      "pretrained": pretrained, "inputs": _digest(inputs)}, write=is_main_process())
    if resume:
        if not os.path.isfile(checkpointer.path):  # (Checkpointer.load's own message speaks of `fit`)
            raise HeadstartError(f"{checkpointer.path}: no checkpoint to resume from; run `headstart pretrain` with "
                                 "this --out first (a checkpoint is written at the end of each epoch)")
        saved = checkpointer.load()
        say(verbose, f"resuming after epoch {saved.epoch} of {settings.epochs}")
    losses = run(model, inputs, settings, verbose, checkpointer)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "headstart_version": __version__,
              "modality": modality, "task": "pretrain", "backbone": model.spec.to_dict(), "head": {"kind": "none"},
              "labels": [], "pretrain": {"objective": "simclr" if modality == "image" else "masked-lm",
                                         "inputs": len(inputs), "losses": losses, "settings": settings.to_dict(),
                                         "seconds": round(time.perf_counter() - started, 1),
                                         "started_from": "pretrained" if pretrained else "random"}}
    if is_main_process():  # one writer when several processes train together
        _write_folder(out, config, {f"backbone.{k}": v for k, v in model.state_dict().items()},
                      backbone_files(model))
    checkpointer.remove()
    say(verbose and is_main_process(), f"backbone written to {out}: use it with `headstart fit DATA --backbone {out}`")
    return out


def _digest(inputs: list[str]) -> str:
    """The inputs (paths or texts) in order: a checkpoint written for other inputs is not resumed."""
    h = hashlib.blake2b(digest_size=16)
    for item in inputs:
        h.update(str(item).encode() + b"\n")
    return h.hexdigest()


def _write_folder(out: str, config: dict, state: dict[str, torch.Tensor], files: dict[str, bytes]) -> None:
    """The bundle-folder layout `read_bundle` reads; the backbone's files and weights first, config last, each
    renamed into place. Files a previous run left under backbone/ go: they would describe another backbone."""
    shutil.rmtree(os.path.join(out, FILES), ignore_errors=True)
    os.makedirs(os.path.join(out, FILES) if files else out, exist_ok=True)
    for name, data in files.items():
        write_atomic(os.path.join(out, FILES, name), lambda f, data=data: f.write(data))
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    write_atomic(os.path.join(out, WEIGHTS), lambda f: f.write(save(tensors)))
    write_atomic(os.path.join(out, CONFIG), lambda f: f.write(json.dumps(config, indent=2).encode()))
