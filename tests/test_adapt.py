"""Domain adaptation: CORAL, AdaBN and DANN behind fit(unlabeled=..., adapt=...), on real and tiny models."""

import os

import numpy as np
import pytest
import torch
from conftest import (
    COLOURS,
    TINY,
    TINY_SIZE,
    checkpoints_written,
    interrupted_after_first_checkpoint,
    make_class_images,
)
from PIL import Image

import headstart as hs
from headstart.methods.adapt import batchnorm_layers, coral_transform, reestimate_batchnorm, reverse_gradient


def test_coral_gives_source_the_target_moments():
    rng = np.random.default_rng(0)
    source = rng.normal(0, 1, (400, 5)) @ rng.normal(0, 1, (5, 5))
    target = rng.normal(3, 1, (400, 5)) @ rng.normal(0, 2, (5, 5))
    a, b = coral_transform(source, target, eps=1e-9)
    aligned = source @ a + b
    assert np.allclose(aligned.mean(0), target.mean(0), atol=1e-3)
    assert np.allclose(np.cov(aligned, rowvar=False), np.cov(target, rowvar=False), rtol=1e-3, atol=1e-3)


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.ones(3, requires_grad=True)
    (reverse_gradient(x, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.5, -1.0, -1.5]))


def test_adabn_takes_the_target_statistics_and_refuses_backbones_without_batchnorm(tmp_path):
    folder = make_class_images(str(tmp_path / "imgs"), COLOURS, per_class=4)
    files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs]
    backbone = hs.create_backbone(TINY, pretrained=False, image_size=TINY_SIZE)
    first = batchnorm_layers(backbone)[0]
    assert reestimate_batchnorm(backbone, files, batch_size=4, verbose=False) == len(batchnorm_layers(backbone))
    # the first BatchNorm follows the stem convolution: its running mean is the mean of that conv's outputs
    from headstart.data.images import eval_transform

    x = torch.stack([eval_transform(backbone.spec.preprocess)(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        stem = backbone.body.conv_stem(x)
    assert torch.allclose(first.running_mean, stem.mean((0, 2, 3)), atol=1e-4)
    with pytest.raises(hs.HeadstartError, match="no BatchNorm"):
        reestimate_batchnorm(hs.create_backbone("minilm_l6"), ["a text", "another"], verbose=False)


@pytest.fixture(scope="module")
def inverted_fashion(tmp_path_factory):
    """Fashion-MNIST test images, inverted (white background): 10 per class unlabeled, 10 per class to score."""
    from headstart.data import fashion_mnist

    x, y = fashion_mnist.load_split("test")
    root = tmp_path_factory.mktemp("inverted")
    rows = fashion_mnist.sample_per_class(y, 20, seed=3)
    for k, i in enumerate(rows):
        folder = root / ("pool" if k % 2 else "eval") / fashion_mnist.CLASSES[y[i]]
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(255 - x[i]).save(folder / f"{i}.png")
    return str(root / "pool"), str(root / "eval")


def test_coral_on_inverted_fashion_mnist_trains_the_head_in_target_coordinates(fashion, inverted_fashion, tmp_path):
    from headstart.inference import embed

    train, _ = fashion
    pool, scored = inverted_fashion
    coral = hs.ImageClassifier(strategy="features", image_size=64, adapt="coral", verbose=False)
    coral.fit(train, unlabeled=pool)
    assert [s["name"] for s in coral.strategy_["stages"]] == ["head", "coral-head"]
    # the head was standardised on aligned source features: their mean is the target's (the pool's) mean
    pool_items = hs.ImageClassifier()._modality.list_inputs([pool])
    target_mean = embed(coral.model_.backbone, pool_items, verbose=False)[0].mean(0)
    assert np.allclose(coral.model_.head[0].mean.numpy(), target_mean, atol=1e-3)
    assert coral.evaluate(scored)["accuracy"] > 0.3  # chance is 0.1 (bench/domain_shift.py compares methods)
    reloaded = hs.load(coral.save(str(tmp_path / "coral.hs")))
    assert np.array_equal(reloaded.predict_proba(scored), coral.predict_proba(scored))


def test_dann_and_adabn_train_end_to_end_and_round_trip(colour_folder, tmp_path):
    target = make_class_images(str(tmp_path / "target"), {k: tuple(v // 2 for v in c) for k, c in COLOURS.items()},
                               per_class=6, seed=1)
    for method in ("dann", "adabn"):
        clf = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="features",
                                 head_epochs=5, epochs=1, batch_size=8, adapt=method, verbose=False)
        torch.manual_seed(0)  # fit seeds with seed=0 before building the backbone: the same random weights
        before = hs.create_backbone(TINY, pretrained=False, image_size=TINY_SIZE)
        clf.fit(colour_folder, unlabeled=target)
        assert clf.backbone_trained_ and method in clf.strategy_["stages"][-1]["name"]
        changed = [k for k, v in clf.model_.backbone.state_dict().items()
                   if v.is_floating_point() and not torch.equal(v, before.state_dict()[k])]
        assert changed and (method == "dann") == any(k.endswith("weight") for k in changed)
        reloaded = hs.load(clf.save(str(tmp_path / f"{method}.hs")))
        assert np.allclose(reloaded.predict_proba(target), clf.predict_proba(target), atol=1e-6)
    with pytest.raises(hs.HeadstartError, match="unknown adapt method"):
        hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="features",
                           adapt="magic", verbose=False).fit(colour_folder, unlabeled=target)


def test_interrupted_dann_resumes_to_the_uninterrupted_weights(colour_folder, tmp_path, monkeypatch):
    target = make_class_images(str(tmp_path / "target"), {k: tuple(v // 2 for v in c) for k, c in COLOURS.items()},
                               per_class=6, seed=1)
    other = make_class_images(str(tmp_path / "other"), {k: tuple(v // 3 for v in c) for k, c in COLOURS.items()},
                              per_class=6, seed=2)
    params = dict(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="features", head_epochs=5,
                  epochs=3, batch_size=8, adapt="dann", verbose=False)
    whole = hs.ImageClassifier(**params).fit(colour_folder, unlabeled=target)
    run = str(tmp_path / "run")
    dann = len(whole.strategy_["stages"]) - 1  # the stage after the plan's
    # 18 target images in batches of 8, 4 source batches an epoch: epoch 2 starts mid-way through a target pass
    with interrupted_after_first_checkpoint(monkeypatch, stage=dann):
        hs.ImageClassifier(**params, out_dir=run).fit(colour_folder, unlabeled=target)
    with pytest.raises(hs.HeadstartError, match=r"run/checkpoint/checkpoint.safetensors: written for different "
                                                r"unlabeled target data"):
        hs.ImageClassifier(**params).fit(colour_folder, unlabeled=other, resume=run)
    with checkpoints_written(monkeypatch) as saved:
        resumed = hs.ImageClassifier(**params, out_dir=run).fit(colour_folder, unlabeled=target, resume=run)
    assert saved == [(dann, 2), (dann, 3)], "resumed after the checkpointed epoch, the plan not run again"
    for (name, a), b in zip(whole.model_.state_dict().items(), resumed.model_.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert [(r["stage"], r["epoch"]) for r in resumed.history_] == [(r["stage"], r["epoch"]) for r in whole.history_]
    assert not os.path.exists(os.path.join(run, "checkpoint")) and os.path.isfile(os.path.join(run, "model.hs"))
