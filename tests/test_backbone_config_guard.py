"""A bundle's backbone config.json cannot make loading build a model larger than the weights the bundle holds: a
crafted size is refused in one line, fast, before anything is built for real (backbones/hf_config.py)."""

from __future__ import annotations

import json
import time
import zipfile

import pytest
import torch
from conftest import TINY_SIZE

import headstart as hs
from headstart.backbones import backbone_files, rebuild_backbone

SNAPSHOT = "0" * 40


def forbid_real_builds(monkeypatch) -> list:
    """From here on, a model built from a config anywhere but on the meta device fails the test (recorded, and
    stopped before it allocates: without the guard, the crafted configs below would allocate terabytes)."""
    from transformers import AutoModel

    real, built = AutoModel.from_config, []

    def only_on_meta(config, *args, **kwargs):
        if torch.empty(0).device.type != "meta":
            built.append(type(config).__name__)
            raise AssertionError(f"a model was built for real from a crafted config ({type(config).__name__})")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_config", only_on_meta)
    return built


def _vit_bundle(folder: str, tmp_path, monkeypatch) -> str:
    """A features model on a tiny ViT that a hub cache under tmp_path holds (nothing fetched), saved."""
    from huggingface_hub import constants
    from transformers import ViTConfig, ViTModel

    hub = tmp_path / "hub" / "models--example--tiny-vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=TINY_SIZE, patch_size=8)).save_pretrained(hub / "snapshots" / SNAPSHOT)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text(SNAPSHOT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    clf = hs.ImageClassifier("hf:example/tiny-vit", strategy="features", image_size=TINY_SIZE,
                             verbose=False).fit(folder)
    return clf.save(str(tmp_path / "vit.hs"))


def _with_config(path: str, out: str, **changes) -> str:
    """A copy of the bundle at `path`, its backbone/config.json changed by `changes`, every other member as it was."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "backbone/config.json":
                data = json.dumps({**json.loads(data), **changes}).encode()
            dst.writestr(name, data)
    return out


def test_a_crafted_image_backbone_config_is_refused_fast_without_building_it(colour_folder, tmp_path, monkeypatch):
    path = _vit_bundle(colour_folder, tmp_path, monkeypatch)
    assert hs.load(path).predict(colour_folder)  # the real bundle builds and loads
    built = forbid_real_builds(monkeypatch)
    # without the guard: a 4-terabyte model built for real (stopped by forbid_real_builds), 10,000 layers built one
    # by one on the meta device (about 20 s), a 10-million-entry label dict (about 45 s)
    crafted = [({"hidden_size": 1_000_000, "intermediate_size": 4_000_000}, "embeddings"),
               ({"num_hidden_layers": 10_000}, "num_hidden_layers 10,000 for "),
               ({"num_labels": 10_000_000}, "num_labels 10,000,000, over headstart's limit")]
    for changes, detail in crafted:
        bundle = _with_config(path, str(tmp_path / f"crafted-{next(iter(changes))}.hs"), **changes)
        start = time.perf_counter()
        with pytest.raises(hs.BundleError) as err:
            hs.load(bundle)
        took = time.perf_counter() - start
        message = str(err.value)
        assert message.startswith(f"{bundle}: the backbone's config.json does not describe the weights the bundle "
                                  "holds (") and detail in message and "\n" not in message, message
        assert took < 3, f"{changes}: refused after {took:.1f} s"
    assert built == []


def test_a_crafted_text_backbone_config_is_refused_before_it_is_built(monkeypatch):
    backbone = hs.create_backbone("minilm_l6", modality="text")
    files, weights = backbone_files(backbone), backbone.state_dict()
    assert rebuild_backbone(backbone.spec, files, weights).feature_dim == 384  # the real files pass
    built = forbid_real_builds(monkeypatch)
    crafted = {**files, "config.json": json.dumps({**json.loads(files["config.json"]), "vocab_size": 10**9}).encode()}
    with pytest.raises(hs.BundleError, match=r"embeddings\.word_embeddings\.weight: the config makes it "
                                             r"\(1000000000, 384\), the weights \(30522, 384\)"):
        rebuild_backbone(backbone.spec, crafted, weights)
    assert built == []
