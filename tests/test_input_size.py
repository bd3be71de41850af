"""`auto` chooses the input size where the images are far smaller than the backbone's native size
(headstart/input_size.py, scored in backbone_choice.py): the sizes tried, then fits on tiny generated images with
the tiny random timm model (native 160 px) standing in for a pretrained one. Real weights: bench/input_size.py."""

import os

import numpy as np
import pytest
from conftest import COLOURS, TINY, make_class_images
from PIL import Image

import headstart as hs
import headstart.backbone_choice as bc
from headstart.backbones import resolve_backbone
from headstart.input_size import median_side, size_candidates, smaller_sizes


def test_sizes_tried_are_2_to_4x_the_side_below_the_native_size():
    assert smaller_sizes(224, 28) == [128]  # Fashion-MNIST at Lite0
    assert smaller_sizes(160, 24) == [96]
    assert smaller_sizes(224, 8) == [64]  # scikit-learn's digits: at least MIN_SIZE
    assert smaller_sizes(224, 50) == [192]
    assert smaller_sizes(224, 100) == []  # 4x is over the native size: nothing smaller to try
    assert smaller_sizes(224, None) == []
    spec = resolve_backbone(TINY)
    assert size_candidates([spec], None, 24) == [(spec, None), (spec, 96)]
    assert size_candidates([spec], 32, 24) == [(spec, 32)]  # the user's size: nothing else


def test_median_side_reads_the_shorter_side_from_headers(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(28, 28), (40, 30), (30, 90), (500, 20), (64, 64)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (w, h)).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert median_side([*paths, str(tmp_path / "bad.png")]) == 30  # sides 28, 30, 30, 20, 64; bad skipped
    assert median_side([]) is None


@pytest.fixture
def tiny_as_pretrained(monkeypatch):
    """The ranking builds the tiny timm model with random weights where it asks for pretrained ones (no hub)."""
    real = bc.create_backbone
    monkeypatch.setattr(bc, "create_backbone",
                        lambda spec, pretrained=True, image_size=None: real(spec, False, image_size=image_size))


def force_size(monkeypatch, size: int) -> None:
    """The rule picks the candidate at `size` px: the test checks where the choice goes, not what it measures."""
    monkeypatch.setattr(bc, "pick", lambda cands, left: (
        next(i for i, c in enumerate(cands) if c["image_size"] == size), f"forced to {size} px"))


def test_small_images_add_size_candidates_and_the_chosen_size_is_fitted_saved_and_loaded(
        tmp_path, monkeypatch, tiny_as_pretrained):
    force_size(monkeypatch, 96)
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=10)  # 24 px
    clf = hs.ImageClassifier(backbone=TINY, epochs=1, head_epochs=5, verbose=False).fit(data)
    choice = clf.advice_.measurements["backbone_choice"]
    assert [c["label"] for c in choice["candidates"]] == [TINY]  # the backbone given, then its sizes
    assert [c["label"] for c in choice["size_candidates"]] == [f"{TINY} @ {k} px" for k in (160, 96)]
    assert [c["image_size"] for c in choice["size_candidates"]] == [160, 96]
    assert choice["median_side"] == 24 and choice["image_size"] == 96 and clf.backbone_choice_.image_size == 96
    for c in choice["size_candidates"]:  # every candidate named with its score and cost
        line = next(r for r in clf.advice_.reasons if r.startswith(f"backbone {c['label']}: probe accuracy"))
        assert "x the cheapest's" in line
    assert any(r.startswith("input size: the images' median shorter side is 24 px") for r in clf.advice_.reasons)
    assert clf.spec_.preprocess.size == 96 and clf.model_.backbone.spec.preprocess.size == 96
    assert clf.image_size is None  # the parameter stays the user's: the fitted spec carries the size
    probe = [os.path.join(data, "red", "red_0.png"), os.path.join(data, "blue", "blue_1.png")]
    loaded = hs.load(clf.save(str(tmp_path / "model.hs")))
    assert loaded.spec_.preprocess.size == 96
    np.testing.assert_allclose(loaded.predict_proba(probe), clf.predict_proba(probe), atol=1e-5)


def test_the_few_shot_path_fits_at_the_chosen_size_too(tmp_path, monkeypatch, tiny_as_pretrained):
    force_size(monkeypatch, 96)
    real = hs.create_backbone  # fewshot rebuilds the backbone: with random weights here too
    monkeypatch.setattr("headstart.methods.fewshot.create_backbone",
                        lambda spec, pretrained=True, image_size=None: real(spec, False, image_size=image_size))
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=5)  # prototypes: under 8 a class
    clf = hs.ImageClassifier(backbone=TINY, verbose=False).fit(data)
    assert clf.strategy_["name"] == "fewshot" and clf.spec_.preprocess.size == 96


def test_large_images_or_an_explicit_size_add_no_candidates(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nothing to choose")

    monkeypatch.setattr(bc, "choose_backbone", refuse)
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():  # 120 px: over half of the tiny model's 160
        os.makedirs(tmp_path / "big" / name)
        for i in range(8):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (120, 120, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "big" / name / f"{i}.png")
    clf = hs.ImageClassifier(backbone=TINY, pretrained=True, strategy="auto", epochs=1, head_epochs=5,
                             verbose=False)
    assert bc.choose_for_fit(clf, clf._load(str(tmp_path / "big")), None, 0.0) is None
    small = make_class_images(str(tmp_path / "small"), COLOURS, per_class=8)
    clf.image_size = 32  # the user's size: no other is tried
    assert bc.choose_for_fit(clf, clf._load(small), None, 0.0) is None
    clf.image_size = None
    with pytest.raises(AssertionError, match="nothing to choose"):  # the same small images without a size do
        bc.choose_for_fit(clf, clf._load(small), None, 0.0)


def test_without_a_backbone_the_sizes_are_tried_for_the_chosen_one_only(tmp_path, monkeypatch, tiny_as_pretrained):
    import dataclasses

    tiny = resolve_backbone(TINY)
    other = dataclasses.replace(tiny, name="tiny_other")
    monkeypatch.setattr(bc, "candidate_specs", lambda modality: [tiny, other])
    monkeypatch.setattr(bc, "available_offline", lambda spec: True)
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=10)
    clf = hs.ImageClassifier(epochs=1, head_epochs=5, verbose=False).fit(data)
    choice = clf.advice_.measurements["backbone_choice"]
    assert [c["label"] for c in choice["candidates"]] == [TINY, "tiny_other"]
    picked = next(r for r in clf.advice_.reasons if r.startswith("-> backbone ")).split()[2].rstrip(":")
    assert [c["name"] for c in choice["size_candidates"]] == [picked] * 2
    assert clf.spec_.name == picked and clf.spec_.preprocess.size == choice["image_size"]
