"""Data sources: image folders and CSV files, validated and split; the demo's packaged data set."""

from .images import (
    ImageRowsDataset,
    LabeledImages,
    collate_skipping,
    eval_transform,
    list_image_files,
    load_images,
    stratified_split,
    train_transform,
)

__all__ = [
    "ImageRowsDataset",
    "LabeledImages",
    "collate_skipping",
    "eval_transform",
    "list_image_files",
    "load_images",
    "stratified_split",
    "train_transform",
]
