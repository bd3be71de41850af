"""Modalities: how one kind of input is loaded, checked, hashed for the cache and batched for a backbone.

The estimator, the trainer and the feature cache know nothing of images or texts; they ask the modality of the
backbone in use. Registered by name, like backbones and strategies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from torch.utils.data import Dataset

from .backbones import Backbone
from .cache import file_digests
from .data.images import ImageRowsDataset, collate_skipping, eval_transform, list_image_files, load_images
from .data.images import train_transform as image_train_transform
from .data.labeled import LabeledData
from .data.texts import TextRowsDataset, list_texts, load_texts, tokenizing_collate


class Modality(Protocol):
    name: str
    noun: str  # "images", "texts": for messages

    def load(self, data, task: str, strict: bool, columns: dict[str, str]) -> LabeledData: ...

    def list_inputs(self, inputs: Sequence) -> list: ...

    def digests(self, items: Sequence) -> list[str]: ...

    def dataset(self, items: Sequence, targets: np.ndarray | None, backbone: Backbone, train: bool) -> Dataset: ...

    def collate(self, backbone: Backbone) -> Callable: ...

    def inference_order(self, items: Sequence) -> list[int] | None: ...


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

    def inference_order(self, items: Sequence) -> list[int] | None:
        return None  # every image is resized to the same shape: order does not change the work


class TextModality:
    name = "text"
    noun = "texts"

    def load(self, data, task: str, strict: bool, columns: dict[str, str]) -> LabeledData:
        return load_texts(data, task, strict=strict, text_col=columns.get("text", "text"),
                          label_col=columns.get("label", "label"))

    def list_inputs(self, inputs: Sequence) -> list:
        return list_texts(inputs)

    def digests(self, items: Sequence) -> list[str]:
        return [hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest() for t in items]

    def dataset(self, items: Sequence, targets: np.ndarray | None, backbone: Backbone, train: bool) -> Dataset:
        return TextRowsDataset(items, targets)

    def collate(self, backbone: Backbone) -> Callable:
        return tokenizing_collate(backbone.tokenizer, backbone.spec.preprocess.max_length)

    def inference_order(self, items: Sequence) -> list[int] | None:
        """Longest first, so each batch pads to texts of about its own length (what sentence-transformers'
        `encode` does); outputs still land on their own rows."""
        return sorted(range(len(items)), key=lambda i: -len(items[i]) if isinstance(items[i], str) else 0)


MODALITIES: dict[str, Modality] = {"image": ImageModality(), "text": TextModality()}


def modality_of(backbone: Backbone) -> Modality:
    return MODALITIES[backbone.spec.modality]
