"""A detector on any registry backbone: feature maps tapped from its later layer groups, a feature pyramid over them,
and torchvision's FCOS head, loss and box decoding.

The model is a `TransferModel` whose `backbone` is the registry backbone and whose `head` is everything new (the
pyramid and the FCOS head), so the project's strategies and its one training loop (train.py) freeze, unfreeze and
give learning rates to the same named layer groups as for classification, and keep frozen BatchNorm in eval mode.

Why FCOS: it is anchor-free and single-stage, one prediction per location (RetinaNet scores 9 anchors per location,
Faster R-CNN adds a region-proposal stage and per-region heads), and its GroupNorm head trains on batches of two.
On this CPU a Lite0 training step was 5% faster than RetinaNet's on the same pyramid (docs/methods.md).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOS
from torchvision.ops import FeaturePyramidNetwork

from ..backbones import Backbone
from ..errors import HeadstartError
from ..heads import TransferModel


def _group_tops(backbone: Backbone) -> dict[str, str]:
    """For each layer group, the last outermost module whose parameters all lie in that group: its output is the
    group's output (a timm stage `blocks.3`, a torchvision `layer2`), whatever the architecture."""
    owner = backbone._param_group
    tops: dict[str, str] = {}
    for name, module in backbone.body.named_modules():
        if not name:
            continue
        groups = {owner[f"{name}.{p}"] for p, _ in module.named_parameters()}
        parent = name.rpartition(".")[0]
        parent_groups = ({owner[f"{parent}.{p}"] for p, _ in backbone.body.get_submodule(parent).named_parameters()}
                         if parent else set())
        if len(groups) == 1 and parent_groups != groups:
            tops[next(iter(groups))] = name  # later modules of the same group replace earlier ones
    return tops


class Taps(nn.Module):
    """Runs the backbone and returns the feature maps of the chosen layer groups (forward hooks on their modules).

    Holds the backbone outside its own module tree: the model's `backbone` attribute owns it (one copy of every
    weight in the state dict)."""

    def __init__(self, backbone: Backbone, groups: list[str]) -> None:
        super().__init__()
        self._backbone = (backbone,)
        self.groups = list(groups)
        tops = _group_tops(backbone)
        self._maps: dict[str, torch.Tensor] = {}
        for g in self.groups:
            backbone.body.get_submodule(tops[g]).register_forward_hook(self._keeper(g))

    def _keeper(self, group: str):
        def keep(module, inputs, output) -> None:
            self._maps[group] = output

        return keep

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        self._maps.clear()
        self._backbone[0](x)
        maps = OrderedDict((g, self._maps[g]) for g in self.groups)
        self._maps.clear()  # the maps hold the whole graph: never keep them past the step
        return maps


@torch.no_grad()
def choose_levels(backbone: Backbone, size: int = 256, levels: int = 3) -> list[tuple[str, int, int]]:
    """The pyramid's inputs: (group, channels, stride) of the deepest group at each of the `levels` coarsest
    strides, e.g. EfficientNet-Lite0's stage2 (stride 8), stage4 (16) and final (32). Measured by one forward pass
    on a blank image, so it works for any backbone whose groups output feature maps."""
    tops = _group_tops(backbone)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [backbone.body.get_submodule(tops[g]).register_forward_hook(
        lambda m, i, o, g=g: shapes.__setitem__(g, tuple(o.shape) if isinstance(o, torch.Tensor) else ()))
        for g in backbone.group_names() if g in tops]
    was_training = backbone.training
    try:
        backbone.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
        backbone.train(was_training)
    by_stride: dict[int, tuple[str, int]] = {}
    for g in backbone.group_names():  # input to output: deeper groups at a stride replace shallower ones
        shape = shapes.get(g, ())
        if len(shape) == 4 and shape[2] > 0 and size % shape[2] == 0:
            by_stride[size // shape[2]] = (g, shape[1])
    strides = sorted(s for s in by_stride if s >= 4)[-levels:]
    if len(strides) < 2:
        raise HeadstartError(f"backbone '{backbone.spec.name}' gives no feature maps at two scales from its layer "
                             "groups (a transformer's tokens?); detection needs a convolutional backbone")
    return [(by_stride[s][0], by_stride[s][1], s) for s in strides]


class DetectionHead(nn.Module):
    """Everything the detector adds to the backbone: the feature pyramid and the FCOS head."""

    def __init__(self, in_channels: list[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(in_channels, channels)
        self.kind, self.fpn_channels = "fcos", channels
        # FCOS builds its own head (classification, box regression, centre-ness); only its modules are kept here.
        self._fcos = (FCOS(_Stub(channels), num_classes),)
        self.fcos = self._fcos[0].head


class _Stub(nn.Module):
    """What FCOS's constructor needs of a backbone (its output channels); never run."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels


class DetectorModel(TransferModel):
    """Backbone -> feature maps of its later layer groups -> pyramid -> FCOS.

    `forward(batch)` returns the loss of each image in the batch ({"images": [...], "targets": [...]}), in train
    and eval mode alike, so the training loop both trains and validates on it; `detect(images)` gives boxes."""

    def __init__(self, backbone: Backbone, num_classes: int, image_size: int, levels: list[tuple[str, int, int]],
                 channels: int = 64, score_thresh: float = 0.05, detections: int = 100) -> None:
        head = DetectionHead([c for _, c, _ in levels], channels, num_classes)
        super().__init__(backbone, head)
        self.levels = levels
        self.taps = Taps(backbone, [g for g, _, _ in levels])
        pre = backbone.spec.preprocess
        # One anchor per location, its size the level's stride: FCOS assigns each box to the level whose range
        # (4 to 8 anchor sizes) holds it, so sizes follow the strides the backbone actually has.
        anchors = AnchorGenerator(tuple((s,) for _, _, s in levels), ((1.0,),) * len(levels))
        fcos = head._fcos[0]
        fcos.anchor_generator = anchors
        # Images are resized so their longer side is at most 2x image_size, the shorter to image_size: a tile of
        # image_size pixels passes at its own scale (small objects stay as large as they were labelled).
        fcos.transform.min_size, fcos.transform.max_size = (image_size,), image_size * 2
        fcos.transform.image_mean, fcos.transform.image_std = list(pre.mean), list(pre.std)
        fcos.score_thresh, fcos.detections_per_img = score_thresh, detections
        self._fcos = (fcos,)

    def _run(self, images: list[torch.Tensor], targets: list[dict] | None):
        fcos = self._fcos[0]
        fcos.transform.train(False)  # one fixed size: resizing stays the same in training and prediction
        batch, targets = fcos.transform(images, targets)
        features = list(self.head.fpn(self.taps(batch.tensors)).values())
        outputs = self.head.fcos(features)
        anchors = fcos.anchor_generator(batch, features)
        return batch, targets, features, outputs, anchors

    def forward(self, x: dict) -> torch.Tensor:
        images, targets = x["images"], x["targets"]
        _, targets, features, outputs, anchors = self._run(images, targets)
        per_level = [f.size(2) * f.size(3) for f in features]
        losses = self._fcos[0].compute_loss(targets, outputs, anchors, per_level)
        total = sum(losses.values())
        return total.reshape(1).expand(len(images))  # one value per image: the loop counts and gathers rows

    @torch.no_grad()
    def detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Boxes (x1, y1, x2, y2 in the input's pixels), scores and label indices for each image."""
        fcos = self._fcos[0]
        sizes = [tuple(im.shape[-2:]) for im in images]
        batch, _, features, outputs, anchors = self._run(images, None)
        per_level = [f.size(2) * f.size(3) for f in features]
        split = {k: list(v.split(per_level, dim=1)) for k, v in outputs.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        found = fcos.postprocess_detections(split, split_anchors, batch.image_sizes)
        return fcos.transform.postprocess(found, batch.image_sizes, sizes)


class DetectionLoss(nn.Module):
    """The loop's loss function: the model already returns its loss (per image), so this only averages it."""

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return out.mean()
