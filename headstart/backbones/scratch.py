"""No-transfer "backbones": the inputs a model trained from scratch on the user's data would see.

They let the from-scratch reference that `auto` measures be a real model: the same linear head, solved the same way
(probe.py), saved in the same bundle, predicted, served and reported like any transferred model.

- `pixels`: grey raw pixels at the images' own small size (their median shorter side, between 8 and 32 pixels),
  flattened. Nothing is learned before the head.
- `tfidf`: TF-IDF of word uni- and bigrams (scikit-learn's TfidfVectorizer defaults: lower case, words of two or
  more characters, smoothed idf, unit length), with the vocabulary and idf fitted on the training texts. The
  vocabulary and idf travel in the spec (JSON, so a bundle holds them and the feature cache's key covers them); the
  vectors are computed in torch, the n-grams by scikit-learn's own analyzer, so the model equals
  `TfidfVectorizer.transform` (tests check it).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .base import Backbone, BackboneSpec, ImagePreprocess, TextPreprocess

PIXEL_SIZES = (8, 32)  # smallest and largest side of the grey pixel grid
NGRAMS = (1, 2)
MAX_VOCABULARY = 20000
# Features are dense rows (N x vocabulary float32): the vocabulary shrinks as the data grows, to keep them under
# about 2 GB (20,000 n-grams up to 25,000 texts; 5,000 at 100,000 texts), never below 1,000.
FEATURE_BYTES = 2 * 1024**3


class GreyPixels(nn.Module):
    """[B, 3, S, S] pixels in [0, 1] -> [B, S*S] grey levels (ITU-R 601 luma, what PIL's convert("L") uses)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.luma).sum(1).flatten(1)


class NgramTokenizer:
    """Texts -> ids of their vocabulary n-grams, padded per batch, in a Hugging Face tokenizer's output format,
    so every text path (training batches, prediction, the server) feeds the `tfidf` backbone unchanged."""

    def __init__(self, vocabulary: Sequence[str], ngram_range: tuple[int, int] = NGRAMS) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vocabulary = {gram: i for i, gram in enumerate(vocabulary)}
        self.analyzer = TfidfVectorizer(ngram_range=tuple(ngram_range)).build_analyzer()

    def __call__(self, texts: Sequence[str], padding: bool = True, truncation: bool = True,
                 max_length: int | None = None, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        # A bag of n-grams has no order to truncate: every n-gram counts, as in TfidfVectorizer (max_length unused).
        ids = [[self.vocabulary[g] for g in self.analyzer(t) if g in self.vocabulary] for t in texts]
        width = max([1, *map(len, ids)])
        input_ids = torch.zeros(len(ids), width, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for row, grams in enumerate(ids):
            input_ids[row, : len(grams)] = torch.as_tensor(grams, dtype=torch.long)
            mask[row, : len(grams)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


class Tfidf(nn.Module):
    """Token ids -> unit-length TF-IDF vectors: raw counts times idf, L2-normalised (TfidfVectorizer's defaults)."""

    def __init__(self, idf: Sequence[float]) -> None:
        super().__init__()
        # from the spec, not the weights file
        self.register_buffer("idf", torch.as_tensor(idf, dtype=torch.float32), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"].to(self.idf.dtype)
        counts = torch.zeros(ids.shape[0], self.idf.shape[0], dtype=self.idf.dtype, device=ids.device)
        weighted = counts.scatter_add(1, ids, mask) * self.idf
        return nn.functional.normalize(weighted, dim=-1)


def _single_group(name: str) -> str:
    return "final"


def build_pixels(spec: BackboneSpec, pretrained: bool) -> Backbone:
    size = spec.preprocess.size
    return Backbone(spec, GreyPixels(), size * size, _single_group, ["final"])


def build_tfidf(spec: BackboneSpec, pretrained: bool) -> Backbone:
    vocabulary = spec.options.get("vocabulary") or []
    idf = spec.options.get("idf") or [1.0] * max(1, len(vocabulary))
    backbone = Backbone(spec, Tfidf(idf), len(idf), _single_group, ["final"])
    backbone.tokenizer = NgramTokenizer(vocabulary, tuple(spec.options.get("ngram_range", NGRAMS)))
    backbone.cache_features = False  # cheaper to compute than to read back: dense rows of the whole vocabulary
    return backbone


def pixel_spec(paths: Sequence[str], sample: int = 32) -> BackboneSpec:
    """The `pixels` spec for these images: a grid as fine as their median shorter side (PIXEL_SIZES bounds it)."""
    from PIL import Image

    sides = []
    for path in list(paths)[:sample]:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
        except Exception:  # unreadable files are skipped everywhere else too
            continue
    low, high = PIXEL_SIZES
    size = int(min(high, max(low, statistics.median(sides) if sides else 16)))
    pre = ImagePreprocess(size=size, crop_pct=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                          interpolation="bilinear")
    return BackboneSpec(name="pixels", source="scratch", arch="pixels", preprocess=pre, feature_dim=size * size,
                        description=f"no transfer: {size}x{size} grey pixels")


def tfidf_spec(texts: Sequence[str]) -> BackboneSpec:
    """The `tfidf` spec fitted on `texts`: vocabulary (most frequent n-grams, see FEATURE_BYTES) and idf."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    cap = int(np.clip(FEATURE_BYTES // (4 * max(1, len(texts))), 1000, MAX_VOCABULARY))
    vectorizer = TfidfVectorizer(ngram_range=NGRAMS, max_features=cap).fit(texts)
    vocabulary = [gram for gram, _ in sorted(vectorizer.vocabulary_.items(), key=lambda kv: kv[1])]
    return BackboneSpec(name="tfidf", source="scratch", arch="tfidf", modality="text",
                        preprocess=TextPreprocess(max_length=0, pooling="mean", normalize=True),
                        feature_dim=len(vocabulary), description=f"no transfer: TF-IDF of {len(vocabulary)} n-grams",
                        options={"vocabulary": vocabulary, "ngram_range": list(NGRAMS),
                                 "idf": [float(v) for v in vectorizer.idf_]})


def build_scratch(spec: BackboneSpec, pretrained: bool) -> Backbone:
    """Either no-transfer backbone, built from its spec alone (a `tfidf` spec holds its vocabulary and idf)."""
    return (build_pixels if spec.arch == "pixels" else build_tfidf)(spec, pretrained)


def scratch_spec(modality: str, items: Sequence) -> BackboneSpec:
    """The no-transfer spec for training inputs `items` of `modality`."""
    return tfidf_spec(items) if modality == "text" else pixel_spec(items)
