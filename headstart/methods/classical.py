"""Classical machine learning on pretrained features: scikit-learn heads on a frozen backbone's cached features.

`CLASSICAL_HEADS` (`logistic`, `svm`, `random-forest`, `knn`, `mlp`): scikit-learn classifiers trained on the
cached features of a frozen backbone. `fit_classical` trains one; `to_tensors` / `from_tensors` turn it into
JSON + tensors for a bundle and back. (The transformer that embeds inside a scikit-learn Pipeline, `Embedder`, is in
`embedder.py`.)

Saving without pickle (bundles refuse pickles: they run code on load and break across scikit-learn versions):
`logistic` is stored by its parameters (scaler mean/scale, coef, intercept, in their own dtype) and rebuilt without
fitting: identical predictions anywhere. `svm`, `random-forest`, `knn`, `mlp` are stored fitted, as the skops file of
their Pipeline (`skops.io.dumps`, a zip of JSON and .npy arrays: no pickle) in a uint8 tensor `classical.skops`, and
loaded as saved: no refit, no training data in the bundle. skops itself rebuilds only the types it trusts (scikit-
learn's public estimators, numpy, builtin containers: rebuilt from their state, no code run); the private types
these heads also hold (a calibrator, a tree, a neighbours tree, an optimiser) are accepted only from
`SKOPS_ALLOWED[head]`, anything else is refused by name before a byte is rebuilt (`skops.io.get_untrusted_types`);
skops' trust in every public estimator is narrowed too: the file's schema may name no scikit-learn type outside
`SKOPS_HELD[head]` (a crafted svm file cannot nest, say, a Pipeline of other estimators inside its calibrator),
and the loaded object must be the head's own Pipeline. The skops zip gets the bundle's size and ratio checks too. A
head saved under another scikit-learn version loads with one warning: skops reads it, but the private structures
may behave differently there.

Bundles written before (`"storage": "refit"`) held the training set instead (float32 cached features, label codes,
the probabilities of the first rows) and refit on load; they still load that way (deterministic fits: the same
data gives identical predict_proba, and a mismatch with the saved probabilities warns; more than `REFIT_MAX_ROWS`
rows is refused, so a crafted one cannot stall `load`), and saving such a loaded
model writes the fitted form. Continual learning does not use any of this: its rehearsal buffer is its own
(`exemplars.Memory`, `memory.*` tensors), and `extend` refuses scikit-learn heads.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Callable

import numpy as np
import sklearn
import skops.io
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning, InconsistentVersionWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ..bundle import check_nested_zip
from ..errors import BundleError, DataError, HeadstartError

PREFIX = "classical."  # tensor names: they sit beside a model's own weights in model.safetensors
SKOPS = "skops"  # the tensor `classical.skops`: the fitted head's skops file, as bytes
CHECK_ROWS = 16  # the old refit format's guard rows
# The old refit format refits on load; an SVM's fit grows with the square of the rows, so a crafted bundle with a
# huge training set would stall `load`. Bundles of that format written by headstart held the rows of one fit.
REFIT_MAX_ROWS = 50_000


def _scaled(model) -> Pipeline:  # margins, kernels, distances and gradients all assume comparable scales
    return Pipeline([("scale", StandardScaler()), ("model", model)])


CLASSICAL_HEADS: dict[str, Callable[[int], Pipeline]] = {
    "logistic": lambda seed: _scaled(LogisticRegression(C=1.0, max_iter=2000)),
    # rbf SVC + Platt scaling fit on unshuffled stratified folds (SVC(probability=True) is deprecated in 1.9)
    "svm": lambda seed: _scaled(CalibratedClassifierCV(SVC(kernel="rbf", C=1.0), cv=5, ensemble=False)),
    # trees ignore feature scale; n_jobs=1 keeps the fit reproducible and the machine's cores for the backbone
    "random-forest": lambda seed: Pipeline([("model", RandomForestClassifier(n_estimators=200, random_state=seed,
                                                                              n_jobs=1))]),
    "knn": lambda seed: _scaled(KNeighborsClassifier(n_neighbors=5, weights="distance")),
    "mlp": lambda seed: _scaled(MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, max_iter=300, random_state=seed)),
}
_BY_PARAMETERS = {"logistic": (("scale", ("mean_", "scale_", "var_")), ("model", ("coef_", "intercept_")))}
# The types outside skops' own trusted set that each fitted head holds, as skops.io.get_untrusted_types lists them
# on the dumped heads (scikit-learn 1.9): nothing else is rebuilt from a bundle. knn keeps no tree when it searches
# by brute force (over 15 features, or k >= half the rows), a KD tree otherwise (a ball tree is its alternative).
SKOPS_ALLOWED: dict[str, frozenset[str]] = {
    "svm": frozenset({"sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration"}),
    "random-forest": frozenset({"sklearn.tree._tree.Tree"}),
    "knn": frozenset({"sklearn.neighbors._kd_tree.KDTree", "sklearn.neighbors._ball_tree.BallTree",
                      "sklearn.metrics._dist_metrics.EuclideanDistance64"}),
    "mlp": frozenset({"sklearn.neural_network._stochastic_optimizers.AdamOptimizer"}),
}
# Every scikit-learn type each fitted head holds, public ones included (read from the dumped heads' schema.json,
# scikit-learn 1.9): a file naming another is refused, however much skops itself trusts it.
_PIPE, _SCALER = "sklearn.pipeline.Pipeline", "sklearn.preprocessing._data.StandardScaler"
SKOPS_HELD: dict[str, frozenset[str]] = {
    "svm": SKOPS_ALLOWED["svm"] | {_PIPE, _SCALER, "sklearn.calibration.CalibratedClassifierCV",
                                   "sklearn.svm._classes.SVC"},
    "random-forest": SKOPS_ALLOWED["random-forest"] | {_PIPE, "sklearn.ensemble._forest.RandomForestClassifier",
                                                       "sklearn.tree._classes.DecisionTreeClassifier"},
    "knn": SKOPS_ALLOWED["knn"] | {_PIPE, _SCALER, "sklearn.neighbors._classification.KNeighborsClassifier"},
    "mlp": SKOPS_ALLOWED["mlp"] | {_PIPE, _SCALER, "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
                                   "sklearn.preprocessing._label.LabelBinarizer"},
}


def _schema_types(data: bytes) -> set[str]:
    """Every `module.Class` a skops file's schema names (its zip was checked before)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        schema = json.loads(zf.read("schema.json"))
    found, stack = set(), [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("__class__"), str):
                found.add(f"{node.get('__module__')}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _check_data(features, labels) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(features, dtype=np.float32), np.asarray(labels)
    if X.ndim != 2 or y.shape != (len(X),) or y.dtype.kind not in "iub" or (y < 0).any():
        raise DataError(f"classical heads need features [N, D] and N class codes >= 0, got {X.shape} and {y.shape} "
                        f"{y.dtype}")
    if len(np.unique(y)) < 2:
        raise DataError("a classifier needs at least two classes in its training data")
    if not np.isfinite(X).all():
        raise DataError("features contain NaN or infinity; drop the rows of unreadable inputs first")
    return X, y.astype(np.int64)


def _fit(est: Pipeline, X: np.ndarray, y: np.ndarray) -> Pipeline:
    from threadpoolctl import threadpool_limits

    # One BLAS thread for the linear model: on 1,000 x 1,280 Lite0 features on this 2-core CPU, 0.61 s with two
    # threads, 0.11 s with one (100 rows: 0.30 -> 0.03 s), the same model; the SVM did not change, the MLP was
    # 10-20% slower on one, so the others keep the default.
    one_thread = isinstance(est.steps[-1][1], LogisticRegression)
    with warnings.catch_warnings(), threadpool_limits(1 if one_thread else None):
        warnings.simplefilter("ignore", ConvergenceWarning)  # a small dataset stopping short of max_iter is fine
        return est.fit(X, y)


def _head(name: str, seed: int) -> Pipeline:
    if name not in CLASSICAL_HEADS:
        raise HeadstartError(f"unknown classical head '{name}'; choose one of {', '.join(CLASSICAL_HEADS)}")
    return CLASSICAL_HEADS[name](int(seed))


def fit_classical(name: str, features, labels, seed: int = 0) -> Pipeline:
    """Train head `name` on features [N, D] and integer class codes [N]; deterministic for a given seed."""
    X, y = _check_data(features, labels)
    est = _head(name, seed)
    if name == "knn":  # fewer rows than neighbours would fail; the clamped value is saved with the params
        est.set_params(model__n_neighbors=min(5, len(y)))
    if name == "svm":  # as many calibration folds as the rarest class allows
        rarest = int(np.unique(y, return_counts=True)[1].min())
        if rarest < 2:
            raise DataError("the svm head calibrates on folds: it needs at least 2 examples of every class")
        est.set_params(model__cv=min(5, rarest))
    return _fit(est, X, y)


def _json_params(est: Pipeline) -> dict:
    """The steps' public hyper-parameters that JSON holds exactly (tuples become lists)."""
    def ok(v) -> bool:
        return v is None or type(v) in (bool, int, str) or (type(v) is float and np.isfinite(v))

    out = {}
    for step, model in est.steps:
        for k, v in model.get_params(deep=True).items():  # deep: the SVC inside calibration
            if ok(v) or (isinstance(v, (tuple, list)) and all(ok(x) for x in v)):
                out[f"{step}__{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def to_tensors(name: str, features, labels, seed: int = 0, fitted: Pipeline | None = None
               ) -> tuple[dict, dict[str, torch.Tensor]]:
    """JSON config + tensors (named `classical.*`) that `from_tensors` rebuilds the head from, with no pickle.
    `fitted`: what `fit_classical(name, features, labels, seed)` returned, to avoid fitting a second time."""
    X, y = _check_data(features, labels)
    est = fitted if fitted is not None else fit_classical(name, X, y, seed)
    return _saved(name, est, seed)


def _saved(name: str, est: Pipeline, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    config = {"kind": "classical", "name": name, "seed": int(seed), "params": _json_params(est),
              "classes": [int(c) for c in est.classes_], "sklearn_version": sklearn.__version__}
    if name in _BY_PARAMETERS:
        config["storage"] = "parameters"
        steps = est.named_steps  # attributes kept in their own dtype: the rebuilt head computes exactly the same
        tensors = {f"{PREFIX}{step}.{attr}": torch.from_numpy(np.ascontiguousarray(getattr(steps[step], attr)))
                   for step, attrs in _BY_PARAMETERS[name] for attr in attrs}
    else:
        config["storage"] = "skops"
        tensors = {PREFIX + SKOPS: torch.frombuffer(bytearray(skops.io.dumps(est)), dtype=torch.uint8)}
    return config, tensors


def resaved(config: dict, tensors: dict[str, torch.Tensor], est: Pipeline) -> tuple[dict, dict[str, torch.Tensor]]:
    """What saving a loaded head writes: what it was loaded from, except that a head of the old refit format is
    written fitted, so a re-saved bundle no longer holds its training matrix."""
    return _saved(config["name"], est, config["seed"]) if config.get("storage") == "refit" else (config, tensors)


def from_tensors(config: dict, tensors: dict[str, torch.Tensor]) -> Pipeline:
    """The fitted head `to_tensors` described; other entries of `tensors` (a model's weights) are ignored."""
    if config.get("storage") == "skops":
        return _from_skops(config, tensors)
    try:
        est = _head(config["name"], config["seed"])
        est.set_params(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["params"].items()})
        get = {k[len(PREFIX):]: v.numpy() for k, v in tensors.items() if k.startswith(PREFIX)}
        if config["storage"] == "parameters":
            for step, attrs in _BY_PARAMETERS[config["name"]]:
                for attr in attrs:
                    setattr(est.named_steps[step], attr, get[f"{step}.{attr}"].copy())
            scale, model = est.named_steps["scale"], est.named_steps["model"]
            scale.n_features_in_ = model.n_features_in_ = model.coef_.shape[1]
            scale.n_samples_seen_, model.classes_ = 0, np.asarray(config["classes"], dtype=np.int64)
            return est
        if len(get["features"]) > REFIT_MAX_ROWS:
            raise BundleError(f"this old-format {config['name']} head would refit on {len(get['features']):,} rows "
                              f"at load (more than {REFIT_MAX_ROWS:,}); refit it with `headstart fit` and save again")
        _fit(est, get["features"], get["labels"])  # the old refit format (module docstring)
        diff = float(np.abs(est.predict_proba(get["features"][:CHECK_ROWS]) - get["check_proba"]).max())
    except (KeyError, ValueError, TypeError, HeadstartError) as err:
        raise _unbuildable(config, err) from None
    if diff > 1e-6:
        warnings.warn(f"the refit {config['name']} head differs from the saved one (probabilities by up to {diff:.2g}; "
                      f"saved with scikit-learn {config.get('sklearn_version')}, this is {sklearn.__version__})",
                      RuntimeWarning, stacklevel=2)
    return est


def _unbuildable(config: dict, err: Exception) -> BundleError:
    detail = (str(err).strip().splitlines() or [""])[0][:200]
    return BundleError(f"classical head cannot be rebuilt ({type(err).__name__}: {detail}); the bundle is damaged "
                       f"or from an incompatible version (saved with scikit-learn {config.get('sklearn_version', '?')}"
                       f", this is {sklearn.__version__})")


def _from_skops(config: dict, tensors: dict[str, torch.Tensor]) -> Pipeline:
    """The fitted head from its skops file, after its zip directory and its types pass (module docstring)."""
    name = config.get("name")
    if name not in SKOPS_ALLOWED or PREFIX + SKOPS not in tensors:
        raise BundleError(f"classical head {name!r} has no skops file headstart reads; the bundle is damaged or "
                          "was edited: re-save it")
    data = tensors[PREFIX + SKOPS].numpy().tobytes()
    check_nested_zip(PREFIX + SKOPS, data)  # before skops inflates a member
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
        held = {t for t in _schema_types(data) if t.startswith("sklearn.")}
        refused = sorted((set(untrusted) - SKOPS_ALLOWED[name]) | (held - SKOPS_HELD[name]))
        if refused:
            raise BundleError(f"classical head {name!r} holds types headstart does not load: {', '.join(refused)}; "
                              "refusing to rebuild it: the bundle is damaged or crafted, re-save the model")
        with warnings.catch_warnings():  # one line below says it once, not a warning per estimator
            warnings.simplefilter("ignore", InconsistentVersionWarning)
            est = skops.io.loads(data, trusted=untrusted)
    except BundleError:
        raise
    except Exception as err:  # skops raises many kinds (zip, JSON, numpy, its own) on a damaged file
        raise _unbuildable(config, err) from None
    expected = [type(step) for _, step in _head(name, 0).steps]
    if not isinstance(est, Pipeline) or [type(step) for _, step in est.steps] != expected:
        raise BundleError(f"classical head {name!r}: its skops file holds a {type(est).__name__}, not the {name} "
                          "head's Pipeline; the bundle is damaged or was edited: re-save it")
    saved = config.get("sklearn_version")
    if saved != sklearn.__version__:
        warnings.warn(f"the {name} head was saved with scikit-learn {saved} and loads under {sklearn.__version__}: "
                      "its predictions may differ", RuntimeWarning, stacklevel=3)
    return est


def predict_proba_full(est: Pipeline, features, n_classes: int) -> np.ndarray:
    """Probabilities [N, n_classes] by class code; a class absent from the training rows gets 0."""
    out = np.zeros((len(features), n_classes))
    out[:, est.classes_] = est.predict_proba(np.asarray(features, dtype=np.float32))
    return out
