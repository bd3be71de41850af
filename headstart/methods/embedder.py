"""`Embedder`: a scikit-learn transformer from image paths or texts to a frozen pretrained backbone's features, e.g.
`make_pipeline(hs.Embedder(backbone="minilm_l6"), LogisticRegression())`.

It lives apart from `classical.py` (scikit-learn heads that headstart fits on its own cached features and saves in a
bundle): here scikit-learn drives, and headstart only embeds, through the same backbones and feature cache.

Embedder's inputs are paths or texts, so the `sklearn.utils.estimator_checks` that feed numeric matrices cannot
apply: `EMBEDDER_INAPPLICABLE_CHECKS` gives each with its reason, as `check_estimator(expected_failed_checks=)` takes
them. All the other checks pass (tests/test_classical.py).
"""

from __future__ import annotations

import os

import numpy as np
from scipy.sparse import issparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..backbones import create_backbone, resolve_backbone
from ..errors import DataError
from ..inference import embed
from ..modalities import MODALITIES

_NUMERIC = "transforms a numeric matrix; Embedder's inputs are image paths or texts (the test checks this on those)"
_N_IN = "n_features_in_ counts numeric columns; an input here is one path or text, so, as in CountVectorizer, unset"
EMBEDDER_INAPPLICABLE_CHECKS: dict[str, str] = {  # for check_estimator(..., expected_failed_checks=...)
    **dict.fromkeys(["check_fit_score_takes_y", "check_estimators_dtypes", "check_dtype_object",
                     "check_pipeline_consistency", "check_estimators_pickle", "check_f_contiguous_array_estimator",
                     "check_transformer_data_not_an_array", "check_transformer_general",
                     "check_methods_sample_order_invariance", "check_methods_subset_invariance",
                     "check_dict_unchanged", "check_fit_idempotent", "check_fit2d_predict1d"], _NUMERIC),
    "check_n_features_in": _N_IN, "check_n_features_in_after_fitting": _N_IN,
    "check_complex_data": "wants complex numbers refused by fit, which reads no input; transform refuses non-text",
    "check_estimators_nan_inf": "wants NaN/inf refused by fit; no numbers here, and transform refuses non-text",
    "check_estimators_empty_data_messages": "wants a '0 feature(s)' message for shape (12, 0), a numeric notion",
    "check_fit1d": "wants 1-D input refused: a 1-D list of paths or texts is exactly Embedder's input",
}


class Embedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Image paths or texts -> the pooled features of a frozen pretrained backbone (float32 [N, D]).

    `fit` builds the backbone (it learns nothing from X: the backbone is pretrained); `transform` embeds through the
    feature cache, so a second pass over the same inputs is free. `modality=None` takes the backbone's own
    ('minilm_l6' is text); `pretrained=False` gives random weights (tests). X is a 1-D list/array of image paths or
    of texts (the texts themselves), or a one-column table as a ColumnTransformer passes it.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", modality: str | None = None,
                 image_size: int | None = None, pretrained: bool = True, batch_size: int = 32,
                 use_cache: bool = True, cache_dir: str | None = None, verbose: bool = False) -> None:
        self.backbone = backbone
        self.modality = modality
        self.image_size = image_size
        self.pretrained = pretrained
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.cache_dir = cache_dir
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []  # always float32 features, whatever came in
        return tags

    @staticmethod
    def _rows(X) -> np.ndarray:
        if issparse(X):
            raise TypeError("Embedder takes image paths or texts, not a sparse matrix")
        arr = np.asarray(X, dtype=object)
        if isinstance(X, (str, bytes, os.PathLike)) or arr.ndim == 0:
            raise ValueError("Embedder takes a list of inputs, not a single one: wrap it in a list")
        if len(arr) == 0:
            raise ValueError("Embedder needs at least one input (found 0 samples)")
        return arr

    def _items(self, X) -> list[str]:
        arr = self._rows(X)
        arr = arr[:, 0] if arr.ndim == 2 and arr.shape[1] == 1 else arr  # a one-column table
        if arr.ndim != 1:
            raise ValueError(f"Embedder takes a 1-D list of image paths or texts, got shape {arr.shape}")
        kinds = (str, os.PathLike) if self.modality_ == "image" else str
        for i, x in enumerate(arr):
            if not isinstance(x, kinds):
                raise TypeError(f"Embedder input {i} is {type(x).__name__} {x!r}, not an image path or a text")
        return [os.fspath(x) for x in arr]

    def fit(self, X, y=None) -> Embedder:
        """Check the parameters and build the backbone; returns self. X's items are not read: nothing is learned
        from them (the backbone is pretrained), and transform checks each input where it reads it."""
        self._rows(X)
        if self.modality is not None and self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {sorted(MODALITIES)} or None, not {self.modality!r}")
        spec = resolve_backbone(self.backbone, self.modality or "image")
        if self.modality is not None and spec.modality != self.modality:
            raise ValueError(f"backbone '{spec.name}' is for {spec.modality}s, not {self.modality}s")
        self.backbone_ = create_backbone(spec, pretrained=self.pretrained,
                                         image_size=self.image_size if spec.modality == "image" else None)
        self.modality_ = spec.modality
        # `_n_features_out` is what ClassNamePrefixFeaturesOutMixin names: embedder0, embedder1, ...
        self.n_features_out_ = self._n_features_out = self.backbone_.feature_dim
        return self

    def transform(self, X) -> np.ndarray:
        """Features [N, D]; raises DataError naming the first input that cannot be read."""
        check_is_fitted(self, "backbone_")
        items = self._items(X)
        modality = MODALITIES[self.modality_]
        if self.modality_ == "image":  # the cache hashes file contents: a missing file must fail here, clearly
            missing = next((p for p in items if not os.path.isfile(p)), None)
            if missing is not None:
                raise DataError(f"{missing}: no such image file")
        feats, ok = embed(self.backbone_, items, batch_size=self.batch_size, use_cache=self.use_cache,
                          cache_dir=self.cache_dir, verbose=self.verbose)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            first = items[bad[0]] if self.modality_ == "image" else f"input {bad[0]} ({items[bad[0]][:60]!r})"
            raise DataError(f"{first}: cannot be read as one of the {modality.noun} "
                            f"({len(bad)} of {len(items)} unreadable)")
        return feats
