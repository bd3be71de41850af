"""Data sources: image folders and CSV files, validated and split; the demo's packaged data set."""

from .images import (
    ImageRowsDataset,
    collate_skipping,
    eval_transform,
    list_image_files,
    load_images,
    train_transform,
)
from .labeled import LabeledData, stratified_split

__all__ = [
    "ImageRowsDataset",
    "LabeledData",
    "collate_skipping",
    "eval_transform",
    "list_image_files",
    "load_images",
    "stratified_split",
    "train_transform",
]
