"""Modalities: how one kind of input is loaded, checked, hashed for the cache and batched for a backbone.

The estimator, the trainer and the feature cache know nothing of images or texts; they ask the modality of the
backbone in use. Registered by name, like backbones and strategies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from torch.utils.data import Dataset

from .backbones import Backbone
from .cache import file_digests
from .data.images import ImageRowsDataset, collate_skipping, eval_transform, list_image_files, load_images
from .data.images import train_transform as image_train_transform
from .data.labeled import LabeledData


class Modality(Protocol):
    name: str
    noun: str  # "images", "texts": for messages

    def load(self, data, task: str, strict: bool, columns: dict[str, str]) -> LabeledData: ...

    def list_inputs(self, inputs: Sequence) -> list: ...

    def digests(self, items: Sequence) -> list[str]: ...

    def dataset(self, items: Sequence, targets: np.ndarray | None, backbone: Backbone, train: bool) -> Dataset: ...

    def collate(self, backbone: Backbone) -> Callable: ...


class ImageModality:
    name = "image"
    noun = "images"

    def load(self, data, task: str, strict: bool, columns: dict[str, str]) -> LabeledData:
        return load_images(data, task, strict=strict, path_col=columns.get("path", "path"),
                           label_col=columns.get("label", "label"))

    def list_inputs(self, inputs: Sequence) -> list:
        return list_image_files(inputs)

    def digests(self, items: Sequence) -> list[str]:
        return file_digests(list(items))

    def dataset(self, items: Sequence, targets: np.ndarray | None, backbone: Backbone, train: bool) -> Dataset:
        pre = backbone.spec.preprocess
        return ImageRowsDataset(items, targets, image_train_transform(pre) if train else eval_transform(pre))

    def collate(self, backbone: Backbone) -> Callable:
        return collate_skipping


MODALITIES: dict[str, Modality] = {"image": ImageModality()}


def register_modality(modality: Modality) -> Modality:
    MODALITIES[modality.name] = modality
    return modality


def modality_of(backbone: Backbone) -> Modality:
    return MODALITIES[backbone.spec.modality]
