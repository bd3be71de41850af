"""headstart: transfer learning that explains itself.

    import headstart as hs
    clf = hs.ImageClassifier(backbone="efficientnet_lite0", strategy="two-stage").fit("data/train")
    clf.evaluate("data/test"); clf.predict(["a.jpg"]); clf.save("pets.hs"); hs.load("pets.hs")
"""

from ._version import __version__
from .api import backbone_status
from .backbones import create_backbone, list_backbones, register_backbone
from .classical import Embedder
from .compare import compare
from .detection import ObjectDetector
from .episodes import fewshot_eval
from .errors import BackboneUnavailable, BundleError, DataError, HeadstartError
from .estimator import ImageClassifier, ImageRegressor, TextClassifier, TextRegressor
from .export import export_model
from .multitask import MultiTaskModel
from .rank import rank
from .restore import load
from .strategies import STRATEGIES

__all__ = [
    "STRATEGIES",
    "TextClassifier",
    "TextRegressor",
    "BackboneUnavailable",
    "BundleError",
    "DataError",
    "Embedder",
    "HeadstartError",
    "ImageClassifier",
    "ImageRegressor",
    "MultiTaskModel",
    "ObjectDetector",
    "__version__",
    "backbone_status",
    "compare",
    "export_model",
    "fewshot_eval",
    "create_backbone",
    "list_backbones",
    "load",
    "rank",
    "register_backbone",
]
