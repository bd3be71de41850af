"""Export to ONNX and TorchScript with a parity check on real inputs, and bundles running on onnxruntime."""

import os
import re

import numpy as np
import pytest
import torch
from conftest import COLOURS, TINY, TINY_SIZE, make_class_images
from typer.testing import CliRunner

import headstart as hs
from headstart.cli import app
from headstart.deploy.batch_scorer import BatchScorer
from headstart.deploy.export import export_model
from headstart.deploy.predict_inputs import iter_inputs
from headstart.errors import HeadstartError


def _not_saturated(probs: np.ndarray) -> None:
    # Parity on probabilities of 0 and 1 would prove little: the check needs probabilities that can move.
    assert probs.max(1).min() < 0.99, "the model is too sure of itself for a meaningful parity check"


@pytest.mark.slow
def test_lite0_onnx_export_on_fashion_mnist_and_onnx_runtime(tmp_path):
    from headstart.data import fashion_mnist

    train = fashion_mnist.export_subset(str(tmp_path / "train"), "train", 2, seed=0)
    test = fashion_mnist.export_subset(str(tmp_path / "test"), "test", 1, seed=1)
    clf = hs.ImageClassifier(strategy="features", head_epochs=2, lr=1e-4, verbose=False, use_cache=False,
                             val_fraction=0.5).fit(train)
    bundle = clf.save(str(tmp_path / "fashion.hs"))
    result = CliRunner().invoke(app, ["export", bundle, "--format", "onnx", "--check", test])
    assert result.exit_code == 0, result.output
    printed = re.search(r"max \|score difference\| = ([0-9.e+-]+) \(tolerance ([0-9.e+-]+)", result.output)
    assert printed and float(printed.group(1)) <= float(printed.group(2)), result.output
    tolerance = float(printed.group(2))
    sibling = str(tmp_path / "fashion.onnx")
    assert os.path.isfile(sibling)

    on_onnx = hs.load(bundle, runtime="onnx")
    assert on_onnx.runtime_.path == sibling  # the export beside the bundle is reused, not redone
    on_onnx.verbose = False
    images = list(iter_inputs("image", [test]))
    want, got = clf.predict_proba(images), on_onnx.predict_proba(images)
    _not_saturated(want)
    assert np.abs(got - want).max() <= tolerance  # other inputs than the check's, within the same budget
    assert on_onnx.predict(images) == clf.predict(images)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_minilm_onnx_and_torchscript_on_tweets(tmp_path):
    from headstart.data import tweets

    train, test, _ = tweets.export_split(str(tmp_path), per_class_train=6, test_size=24)
    clf = hs.TextClassifier(strategy="features", head_epochs=2, lr=1e-4, verbose=False, use_cache=False,
                            val_fraction=0.34).fit(train)
    texts = list(iter_inputs("text", [test]))
    want = clf.predict_proba(texts)
    _not_saturated(want)

    traced = export_model(clf, str(tmp_path / "tweets.pt"), "torchscript", check_inputs=[test], verbose=False)
    assert traced["n_checked"] == 24 and traced["max_abs_diff"] <= traced["tolerance"]
    module = torch.jit.load(traced["path"])
    batch = BatchScorer(clf).collate(texts)
    with torch.no_grad():
        assert np.abs(module(batch["input_ids"], batch["attention_mask"]).numpy() - want).max() <= 1e-5

    bundle = clf.save(str(tmp_path / "tweets.hs"))
    on_onnx = hs.load(bundle, runtime="onnx")  # no export beside it: exported into the cache, parity-checked
    assert on_onnx.runtime_.path.startswith(os.environ["HEADSTART_CACHE"])
    on_onnx.verbose = False
    assert np.abs(on_onnx.predict_proba(texts) - want).max() <= traced["tolerance"]  # the same inputs and head
    assert on_onnx.predict(texts) == clf.predict(texts)


def test_tiny_export_errors_are_one_line(tmp_path):
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=6)
    common = dict(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="features", verbose=False,
                  use_cache=False)
    classical = hs.ImageClassifier(head="logistic", **common).fit(data)
    with pytest.raises(HeadstartError, match="scikit-learn model .* cannot go into"):
        export_model(classical, str(tmp_path / "c.onnx"), "onnx", check_inputs=[data])
    assert not os.path.exists(tmp_path / "c.onnx")

    bundle = hs.ImageClassifier(head_epochs=3, **common).fit(data).save(str(tmp_path / "tiny.hs"))
    unknown = CliRunner().invoke(app, ["export", bundle, "--format", "tflite"])
    assert isinstance(unknown.exception, HeadstartError) and "onnx, torchscript" in str(unknown.exception)
    (tmp_path / "junk.png").write_bytes(b"junk")
    unreadable = CliRunner().invoke(app, ["export", bundle, "--check", str(tmp_path / "junk.png")])
    assert isinstance(unreadable.exception, HeadstartError) and "--check" in str(unreadable.exception)
    with pytest.raises(HeadstartError, match="unknown runtime"):
        hs.load(bundle, runtime="tensorrt")
