"""headstart: transfer learning that explains itself.

    import headstart as hs
    clf = hs.ImageClassifier(backbone="efficientnet_lite0", strategy="two-stage").fit("data/train")
    clf.evaluate("data/test"); clf.predict(["a.jpg"]); clf.save("pets.hs"); hs.load("pets.hs")
"""

__version__ = "0.1.0"

from .api import backbone_status  # noqa: E402
from .backbones import create_backbone, list_backbones, register_backbone  # noqa: E402
from .classical import Embedder  # noqa: E402
from .compare import compare  # noqa: E402
from .episodes import fewshot_eval  # noqa: E402
from .errors import BackboneUnavailable, BundleError, DataError, HeadstartError  # noqa: E402
from .estimator import ImageClassifier, ImageRegressor, TextClassifier, TextRegressor  # noqa: E402
from .export import export_model  # noqa: E402
from .multitask import MultiTaskModel  # noqa: E402
from .rank import rank  # noqa: E402
from .restore import load  # noqa: E402
from .strategies import STRATEGIES  # noqa: E402

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
