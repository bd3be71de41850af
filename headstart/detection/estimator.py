"""`ObjectDetector`: the estimator facade for boxes: `fit / predict / evaluate / save`, parameters in `__init__`.

Training reuses the classifier's pieces: the backbone registry, the strategies' plans over named layer groups and
the one training loop (train.run_stage, on Accelerate), which keeps the weights of the epoch with the lowest
validation loss. Images are cut into tiles (data.py) for training and evaluation; prediction slides the same tiles
over each whole image and merges what they found. The tiles as a training set: tile_training.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from torchvision.ops import batched_nms
from torchvision.transforms.functional import pil_to_tensor

from .._runtime import keeps_callers_rng, resolve_workers, seed_everything
from ..backbones import BackboneSpec, backbone_files, create_backbone, rebuild_backbone, resolve_backbone
from ..bundle import write_bundle
from ..errors import DataError, HeadstartError
from ..inference import _device
from ..plan_runner import open_run_log
from ..progress import say
from ..strategies import get_strategy
from ..train import LoopConfig, run_stage
from .data import Labelled, image_size, load_image, read_boxes, tile, windows
from .metrics import box_map
from .model import DetectionLoss, DetectorModel, choose_levels
from .picture import draw_boxes
from .tile_training import TileDataset, collate, split_tiles

# The strategies that carry over to detection: the head here is a pyramid and an FCOS head trained by gradient,
# so the solved-probe, LoRA, truncate and few-shot plans of classification do not apply.
STRATEGIES = ("features", "finetune", "full", "two-stage")
PREDICT_OVERLAP = 0.25  # tiles overlap when predicting, so an object cut by one tile's edge is whole in the next
MERGE_IOU = 0.5  # boxes of one class from overlapping tiles that overlap more than this are one object


def _source(data) -> str:
    """How an error names the data: its path, or what a list of images amounts to."""
    return os.fspath(data) if isinstance(data, (str, os.PathLike)) else f"the {len(data)} images given"


class ObjectDetector:
    """Boxes and labels on images, by transfer from any registered convolutional backbone.

        det = hs.ObjectDetector(backbone="efficientnet_lite0", strategy="finetune").fit("boxes.csv")
        det.evaluate("test.csv"); det.predict(["a.png"]); det.save("trees.hs"); hs.load("trees.hs")
    """

    modality = "image"
    _task = "detection"  # what the server and its metadata call the model's task, as for the classifiers
    default_backbone = "efficientnet_lite0"

    def __init__(
        self,
        backbone: str | None = None,
        strategy: str = "finetune",
        *,
        epochs: int = 10,
        head_epochs: int | None = None,
        lr: float = 1e-3,
        batch_size: int = 4,
        tile_size: int = 400,
        tile_overlap: float = 0.0,
        val_fraction: float = 0.2,
        patience: int = 3,
        last_n: int = 2,
        pretrained: bool = True,
        fpn_channels: int = 64,
        score_threshold: float = 0.05,
        seed: int = 0,
        num_workers: int | None = None,
        mixed_precision: str = "auto",
        out_dir: str | None = None,
        verbose: bool = True,
    ) -> None:
        self.backbone = backbone
        self.strategy = strategy
        self.epochs = epochs
        self.head_epochs = head_epochs  # epochs of a head-only stage (features, two-stage); None: `epochs`
        self.lr = lr
        self.batch_size = batch_size
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.val_fraction = val_fraction
        self.patience = patience
        self.last_n = last_n
        self.pretrained = pretrained
        self.fpn_channels = fpn_channels
        self.score_threshold = score_threshold
        self.seed = seed
        self.num_workers = num_workers
        self.mixed_precision = mixed_precision
        self.out_dir = out_dir
        self.verbose = verbose

    def get_params(self, deep: bool = True) -> dict:
        return {n: getattr(self, n) for n in inspect.signature(type(self).__init__).parameters if n != "self"}

    def set_params(self, **params) -> ObjectDetector:
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"unknown parameter '{k}' for ObjectDetector")
            setattr(self, k, v)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise HeadstartError("this ObjectDetector is not fitted yet: call fit() or hs.load() first")

    # --- data -------------------------------------------------------------------------------------------
    def _tiles(self, data: str | list[Labelled]) -> list[Labelled]:
        items = read_boxes(data) if isinstance(data, (str, os.PathLike)) else data
        return tile(items, self.tile_size, self.tile_overlap)

    def _loader(self, tiles: list[Labelled], train: bool, batch: int, gen: torch.Generator | None) -> DataLoader:
        return DataLoader(TileDataset(tiles, self.classes_, flip=train), batch_size=batch, shuffle=train,
                          generator=gen, collate_fn=collate, num_workers=resolve_workers(self.num_workers))

    def _split(self, items: list[Labelled]) -> tuple[list[Labelled], list[Labelled]]:
        """Training and validation tiles, `val_fraction` of the images held out whole: an edge tile overlaps its
        neighbour, so tiles of one image split between the two would share pixels and boxes. A single image has
        its tiles split instead, without the training tiles that overlap a validation tile."""
        if len(items) < 2:
            return split_tiles(self._tiles(items), self.val_fraction, self.seed)
        held = split_tiles(items, self.val_fraction, self.seed)
        return self._tiles(held[0]), self._tiles(held[1])

    # --- fit --------------------------------------------------------------------------------------------
    @keeps_callers_rng
    def fit(self, data: str | list[Labelled], valid: str | list[Labelled] | None = None) -> ObjectDetector:
        """Train on boxes (a CSV, COCO .json or VOC folder); hold out `val_fraction` of the images unless `valid`."""
        started = time.perf_counter()
        if self.strategy == "auto":  # no measured advisor for boxes yet: the plan that suits small box sets
            say(self.verbose, f"auto: strategy finetune (last {self.last_n} layer groups); detection has no "
                "measured advisor yet")
        elif self.strategy not in STRATEGIES:
            raise HeadstartError(f"strategy '{self.strategy}' does not apply to detection: choose one of "
                                 f"{', '.join(STRATEGIES)}")
        generator = seed_everything(self.seed)
        items = read_boxes(data) if isinstance(data, (str, os.PathLike)) else data
        train, val = (self._tiles(items), self._tiles(valid)) if valid is not None else self._split(items)
        tiles = train if valid is not None else train + val  # the classes: those of `data`
        if not val:
            raise DataError(f"{_source(data)}: no validation tiles: give more images, val_fraction above 0, or `valid`")
        if not train:  # one small image whose tiles all overlap the held-out one
            raise DataError(f"{_source(data)}: no training tiles left beside the validation ones: give more images "
                            "or `valid`")
        self.classes_ = sorted({lab for t in tiles for lab in t.labels})
        unknown = sorted({lab for t in val for lab in t.labels} - set(self.classes_))
        if unknown:
            raise DataError(f"{_source(valid)}: label '{unknown[0]}' is not among the training classes {self.classes_}")
        if not self.classes_:
            raise DataError(f"{_source(data)}: no boxes to learn from (every image is a negative)")
        spec = resolve_backbone(self.backbone or self.default_backbone, "image")
        backbone = create_backbone(spec, pretrained=self.pretrained)
        levels = choose_levels(backbone)
        self.model_ = DetectorModel(backbone, len(self.classes_), self.tile_size, levels, self.fpn_channels,
                                    self.score_threshold)
        strategy = get_strategy("finetune" if self.strategy == "auto" else self.strategy, last_n=self.last_n)
        stages = strategy.plan(backbone.group_names(), self.epochs, self.lr, self.head_epochs or self.epochs)
        say(self.verbose, f"data: {len(train)} training and {len(val)} validation tiles of {self.tile_size} px, "
            f"{sum(len(t.boxes) for t in train)} training boxes, classes {self.classes_}")
        say(self.verbose, f"backbone {spec.name}: pyramid over {', '.join(f'{g} (stride {s})' for g, _, s in levels)};"
            f" strategy {strategy.name}: " + " -> ".join(f"{s.name} x{s.epochs}" for s in stages))
        loop = LoopConfig(patience=self.patience, mixed_precision=self.mixed_precision,
                          freeze_bn_stats=self.pretrained, verbose=self.verbose)
        log = open_run_log(self.out_dir, True)
        self.history_: list[dict] = []
        for i, stage in enumerate(stages):
            loaders = (self._loader(train, True, stage.train_batch(self.batch_size), generator),
                       self._loader(val, False, self.batch_size, None))
            self.history_ += run_stage(self.model_, stage, *loaders, DetectionLoss(), "detection",
                                       dataclasses.replace(loop, keep_start=i > 0), log)
        self.model_.eval()
        self.spec_ = backbone.spec
        self.backbone_trained_ = any(not s.backbone_frozen for s in stages)
        self.strategy_ = {"name": strategy.name, "stages": [s.to_dict() for s in stages]}
        found = self._detect(val)
        self.metrics_ = {"validation": self._metrics(val, found),
                         "fit_seconds": round(time.perf_counter() - started, 2)}
        if self.out_dir:
            self.save(os.path.join(self.out_dir, "model.hs"))
            draw_boxes(val, found, os.path.join(self.out_dir, "report", "boxes.png"))
        return self

    # --- predict ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _detect_pixels(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections on each uint8 [3, H, W] tile, in the tile's pixels: on the torch model, or on the ONNX graph
        when one is attached (`runtime_`, from hs.load(..., runtime="onnx"))."""
        self._check_fitted()
        runtime = getattr(self, "runtime_", None)
        device = torch.device("cpu") if runtime is not None else _device()
        model = self.model_.to(device).eval()
        found = []
        for start in range(0, len(images), self.batch_size):
            part = [im.float().div(255.0).to(device) for im in images[start:start + self.batch_size]]
            out = runtime.detect(part) if runtime is not None else model.detect(part)
            found += [{k: v.cpu() for k, v in d.items()} for d in out]
        return found

    def _detect(self, tiles: Sequence[Labelled]) -> list[dict[str, torch.Tensor]]:
        """Detections on each tile, in the tile's pixels."""
        return self._detect_pixels([pil_to_tensor(load_image(t)) for t in tiles])

    def detect_image(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detections on a whole uint8 [3, H, W] image in its pixels: overlapping tiles when it is larger than one,
        whose boxes of one class that overlap by more than MERGE_IOU are merged (non-maximum suppression); best
        first. (The server's entry point: uploads are decoded in memory, never written to files.)"""
        height, width = pixels.shape[-2:]
        overlap = PREDICT_OVERLAP if max(width, height) > self.tile_size else 0.0
        wins = windows(width, height, self.tile_size, overlap)
        found = self._detect_pixels([pixels[:, y0:y1, x0:x1] for x0, y0, x1, y1 in wins])
        boxes = torch.cat([d["boxes"] + torch.tensor([w[0], w[1], w[0], w[1]]) for d, w in zip(found, wins)])
        scores = torch.cat([d["scores"] for d in found])
        labels = torch.cat([d["labels"] for d in found])
        keep = batched_nms(boxes, scores, labels, MERGE_IOU) if len(wins) > 1 else torch.argsort(-scores)
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    def _whole_image(self, path: str) -> dict[str, torch.Tensor]:
        """detect_image on an image file, decoded once (its tiles are views of it)."""
        width, height = image_size(path)
        return self.detect_image(pil_to_tensor(load_image(Labelled(path, width, height))))

    def predict(self, inputs: str | Sequence[str]) -> list[dict]:
        """Per image: path, and boxes (x1, y1, x2, y2 in the image's pixels), scores and labels, best first.
        An image larger than a tile is covered by overlapping tiles; boxes they share are merged (per-class NMS)."""
        self._check_fitted()
        paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        out = []
        for path in paths:
            found = self._whole_image(str(path))
            out.append({"path": str(path), "boxes": found["boxes"].tolist(), "scores": found["scores"].tolist(),
                        "labels": [self.classes_[int(k)] for k in found["labels"]]})
        return out

    def _metrics(self, tiles: list[Labelled], preds: list[dict[str, torch.Tensor]]) -> dict:
        index = {c: i for i, c in enumerate(self.classes_)}
        unknown = sorted({lab for t in tiles for lab in t.labels} - set(index))
        if unknown:
            raise DataError(f"label '{unknown[0]}' was not among the training classes {self.classes_}")
        targets = [{"boxes": torch.as_tensor(t.boxes).reshape(-1, 4),
                    "labels": torch.as_tensor([index[lab] for lab in t.labels], dtype=torch.long)} for t in tiles]
        return box_map(preds, targets, self.classes_)

    def evaluate(self, data: str | list[Labelled]) -> dict:
        """mAP@0.5 and mAP@[.5:.95], overall and per class, on labelled data given as for `fit`: each whole image
        scored as `predict` finds its boxes (sliding tiles, merged), against all of its boxes. (Validation during
        `fit` scores held-out tiles instead.)"""
        self._check_fitted()
        items = read_boxes(data) if isinstance(data, (str, os.PathLike)) else data
        # tiles given as such (a window in their file) are scored as they are
        return self._metrics(items, [self._whole_image(x.path) if x.window is None else self._detect([x])[0]
                                     for x in items])

    # --- persistence ------------------------------------------------------------------------------------
    def _config(self) -> dict:
        return {"modality": "image", "task": "detection", "estimator": "ObjectDetector",
                "backbone": self.spec_.to_dict(), "backbone_trained": self.backbone_trained_,
                "head": {"kind": "fcos", "out_dim": len(self.classes_), "channels": self.model_.head.fpn_channels,
                         "levels": [list(level) for level in self.model_.levels]},
                "labels": self.classes_, "strategy": self.strategy_, "metrics": self.metrics_,
                "params": {k: v for k, v in self.get_params().items() if k != "out_dir"}}

    def save(self, path: str) -> str:
        """Write the bundle (config.json + model.safetensors, atomically); returns the path."""
        self._check_fitted()
        return write_bundle(path, self._config(), self.model_.state_dict(), backbone_files(self.model_.backbone))

    @classmethod
    def _from_bundle(cls, config: dict, state: dict[str, torch.Tensor], files: dict[str, bytes] | None = None
                     ) -> ObjectDetector:
        known = inspect.signature(cls.__init__).parameters
        est = cls(**{k: v for k, v in config["params"].items() if k in known})
        est.verbose = False
        spec = BackboneSpec.from_dict(config["backbone"])
        prefix = "backbone."
        backbone = rebuild_backbone(spec, files or {}, {k[len(prefix):]: v for k, v in state.items()
                                                        if k.startswith(prefix)})
        head = config["head"]
        if head.get("kind") != "fcos":
            raise HeadstartError(f"unknown detection head '{head.get('kind')}'")
        levels = [(str(g), int(c), int(s)) for g, c, s in head["levels"]]
        est.classes_ = list(config["labels"])
        est.model_ = DetectorModel(backbone, len(est.classes_), est.tile_size, levels, int(head["channels"]),
                                   est.score_threshold)
        est.model_.load_state_dict(state, strict=True)
        est.model_.eval()
        est.spec_, est.backbone_trained_ = spec, bool(config["backbone_trained"])
        est.strategy_, est.metrics_ = config.get("strategy"), config.get("metrics")
        return est
