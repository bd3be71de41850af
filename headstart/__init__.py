"""headstart: transfer learning that explains itself.

    import headstart as hs
    clf = hs.ImageClassifier(backbone="efficientnet_lite0", strategy="two-stage").fit("data/train")
    clf.evaluate("data/test"); clf.predict(["a.jpg"]); clf.save("pets.hs"); hs.load("pets.hs")
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING

from ._version import __version__

# Each public name and the module that defines it. They load on first use (PEP 562), not at `import headstart`:
# torch, timm, transformers and scikit-learn take ~10 s to import here, which `headstart --help`, a typo'd option
# or a script that only reads `hs.__version__` should not pay.
_PUBLIC = {
    "BackboneUnavailable": "errors",
    "BundleError": "errors",
    "DataError": "errors",
    "HeadstartError": "errors",
    "backbone_status": "api",
    "create_backbone": "backbones",
    "list_backbones": "backbones",
    "register_backbone": "backbones",
    "Embedder": "methods.embedder",
    "compare": "methods.compare",
    "ObjectDetector": "detection",
    "fewshot_eval": "methods.episodes",
    "ImageClassifier": "estimator",
    "ImageRegressor": "estimator",
    "TextClassifier": "estimator",
    "TextRegressor": "estimator",
    "export_model": "deploy.export",
    "MultiTaskModel": "methods.multitask",
    "rank": "rank",
    "load": "deploy.loading",
    "STRATEGIES": "strategies",
}

__all__ = [  # a literal list, as linters and `from headstart import *` read it; tests check it names _PUBLIC
    "STRATEGIES",
    "BackboneUnavailable",
    "BundleError",
    "DataError",
    "Embedder",
    "HeadstartError",
    "ImageClassifier",
    "ImageRegressor",
    "MultiTaskModel",
    "ObjectDetector",
    "TextClassifier",
    "TextRegressor",
    "__version__",
    "backbone_status",
    "compare",
    "create_backbone",
    "export_model",
    "fewshot_eval",
    "list_backbones",
    "load",
    "rank",
    "register_backbone",
]


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'headstart' has no attribute {name!r}")
    value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


class _Package(ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        # Importing a submodule binds it as an attribute of its package. `rank` is a submodule and a public function
        # at once, and the function must keep the name, whichever is imported first (`compare`'s module binds on
        # headstart.methods).
        if isinstance(value, ModuleType) and _PUBLIC.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what type checkers, IDEs and tests/test_layering.py read: the same names, imported eagerly
    from .api import backbone_status
    from .backbones import create_backbone, list_backbones, register_backbone
    from .deploy.export import export_model
    from .deploy.loading import load
    from .detection import ObjectDetector
    from .errors import BackboneUnavailable, BundleError, DataError, HeadstartError
    from .estimator import ImageClassifier, ImageRegressor, TextClassifier, TextRegressor
    from .methods.compare import compare
    from .methods.embedder import Embedder
    from .methods.episodes import fewshot_eval
    from .methods.multitask import MultiTaskModel
    from .rank import rank
    from .strategies import STRATEGIES
