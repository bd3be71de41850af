"""What `auto` measures on the user's data before it decides (advisor.py applies the rules to these numbers).

- the raw-input reference: the same classifier on the inputs with no transfer (16x16 grey pixels for images,
  TF-IDF for texts), scored as the frozen features' probe is;
- the cost of one forward pass per item on this hardware (`time_forward`), which sets the fine-tune's estimate;
- for regression and multi-label, the solved head's cross-validated score (ridge leave-one-out R^2, one-vs-rest
  micro-F1) on frozen features (HEAD_TASK_MEASURES) and on the no-transfer inputs (`raw_input_score`).
"""

from __future__ import annotations

import time

import numpy as np

from .backbones import create_backbone, scratch_spec
from .heads import HeadConfig, build_head
from .inference import _device, _to, embed
from .probe_heads import cross_validated_micro_f1, fit_ridge
from .rank import cv_accuracy, probe_accuracy


def raw_input_accuracy(modality: str, items: list, labels: np.ndarray, seed: int = 0) -> float:
    """A from-scratch reference: logistic regression on raw inputs, scored as the frozen features' probe is: on tiny
    grey images, that very probe (rank.probe_accuracy); on TF-IDF of texts (sparse), scikit-learn's logistic
    regression on the same folds (rank.cv_accuracy)."""
    if modality == "text":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=1), LogisticRegression(max_iter=300))
        return cv_accuracy(model, list(items), labels, seed=seed)
    from PIL import Image

    def pixels(path: str) -> np.ndarray:
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("L").resize((16, 16)), dtype=np.float32).ravel() / 255
        except Exception:  # unreadable files were skipped when loading; keep rows aligned
            return np.zeros(256, dtype=np.float32)

    return probe_accuracy(np.stack([pixels(p) for p in items]), labels, seed=seed)  # the same model, on pixels


def time_forward(backbone, modality, items: list, batch: int = 8, seed: int = 0) -> float:
    """Seconds per item of one forward pass on this hardware (median of two timed batches after a warm-up), on
    items drawn at random (seeded): the first rows of a file can be shorter or smaller than the rest."""
    import torch

    picks = np.random.default_rng(seed).choice(len(items), min(len(items), batch * 3), replace=False)
    sample = [items[i] for i in sorted(picks)]
    collate = modality.collate(backbone)
    ds = modality.dataset(sample, None, backbone, train=False)
    batches = [collate([ds[i] for i in range(j, min(j + batch, len(ds)))]) for j in range(0, len(ds), batch)]
    device = _device()
    backbone = backbone.to(device).eval()
    times = []
    with torch.inference_mode():
        for idx, x, _ in batches:
            if x is None:
                continue
            t = time.perf_counter()
            backbone(_to(x, device))
            if device.type == "cuda":  # kernels run asynchronously: wait for them, or the time is only the launch
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t) / max(len(idx), 1))
    return float(np.median(times[1:] if len(times) > 1 else times)) if times else 0.0


def ridge_r2(features: np.ndarray, targets: np.ndarray) -> float:
    """Leave-one-out R^2 of ridge regression at its best scaling and penalty: how the regression head
    (probe_heads.fit_ridge) would do, measured the way it chooses them."""
    import torch

    if len(targets) < 3:
        return float("nan")
    y = torch.as_tensor(targets, dtype=torch.float64)
    y = (y - y.mean()) / (y.std() if float(y.std()) > 0 else 1.0)
    chosen = fit_ridge(build_head(HeadConfig(), features.shape[1], 1), torch.as_tensor(features), y.reshape(-1, 1))
    return float(1 - chosen["cv_mse"] / y.var(unbiased=False))


def multilabel_micro_f1(features: np.ndarray, targets: np.ndarray, seed: int = 0) -> float:
    """Cross-validated micro-F1 of the one-vs-rest head (probe_heads.cross_validated_micro_f1)."""
    import torch

    return cross_validated_micro_f1(torch.as_tensor(features), torch.as_tensor(targets), seed)


HEAD_TASK_MEASURES = {"regression": ("ridge leave-one-out R^2", lambda f, y, seed: ridge_r2(f, y)),
                      "multilabel": ("one-vs-rest cross-validated micro-F1", multilabel_micro_f1)}


def raw_input_score(task: str, modality: str, items: list, targets: np.ndarray, seed: int = 0) -> float:
    """The from-scratch reference for regression and multi-label: the same head on the no-transfer inputs
    (backbones/scratch.py), the very inputs the race's baseline model reads."""
    backbone = create_backbone(scratch_spec(modality, items), pretrained=False)
    feats, ok = embed(backbone, items, use_cache=False, verbose=False)
    return HEAD_TASK_MEASURES[task][1](feats[ok], targets[ok], seed)
