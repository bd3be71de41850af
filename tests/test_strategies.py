import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from headstart.backbones import create_backbone
from headstart.data.images import ImageRowsDataset, collate_skipping, eval_transform, scan_image_folder
from headstart.errors import HeadstartError
from headstart.heads import HeadConfig, TransferModel, build_head, loss_for
from headstart.strategies import HEAD, get_strategy
from headstart.train import LoopConfig, beats_start, run_stage

GROUPS = ["stem", "stage0", "stage1", "stage2", "final"]


def test_features_trains_only_the_head():
    (stage,) = get_strategy("features").plan(GROUPS, epochs=3, lr=1e-3, head_epochs=50)
    assert stage.backbone_frozen and stage.epochs == 50 and stage.lrs == {HEAD: 1e-3}


def test_finetune_unfreezes_the_last_n_groups():
    (stage,) = get_strategy("finetune", last_n=2).plan(GROUPS, 3, 1e-3, 50)
    assert set(stage.lrs) == {HEAD, "stage2", "final"}
    assert stage.lrs["final"] < stage.lrs[HEAD]
    with pytest.raises(HeadstartError):
        get_strategy("finetune", last_n=0).plan(GROUPS, 3, 1e-3, 50)


def test_two_stage_probes_then_uses_discriminative_rates():
    probe, tune = get_strategy("two-stage").plan(GROUPS, 3, 1e-3, 50)
    assert probe.backbone_frozen and not tune.backbone_frozen
    rates = [tune.lrs[g] for g in GROUPS]
    assert all(a < b for a, b in zip(rates, rates[1:])), "earlier groups must get lower rates"
    assert rates[-1] == pytest.approx(10 * rates[0])


def test_a_plan_can_fine_tune_in_smaller_batches_than_it_extracts_features():
    probe, tune = get_strategy("two-stage", finetune_batch_size=16).plan(GROUPS, 3, 1e-3, 50)
    assert probe.batch_size is None and tune.batch_size == 16
    (full,) = get_strategy("full", finetune_batch_size=8).plan(GROUPS, 3, 1e-3, 50)
    assert full.batch_size == 8
    assert all(s.batch_size is None for s in get_strategy("two-stage").plan(GROUPS, 3, 1e-3, 50))


def test_full_trains_every_group():
    (stage,) = get_strategy("full").plan(GROUPS, 3, 1e-3, 50)
    assert set(stage.lrs) == {HEAD, *GROUPS}


def test_unknown_strategy():
    with pytest.raises(HeadstartError, match="unknown strategy 'magic'"):
        get_strategy("magic")


def _loaders(folder):
    data = scan_image_folder(folder)
    backbone = create_backbone("timm:test_efficientnet", pretrained=False, image_size=32)
    ds = ImageRowsDataset(data.items, data.targets, eval_transform(backbone.spec.preprocess))
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate_skipping,
                        generator=torch.Generator().manual_seed(0))
    return backbone, loader


def test_finetune_moves_only_unfrozen_groups_and_frozen_batchnorm_keeps_its_statistics(colour_folder):
    torch.manual_seed(0)
    backbone, loader = _loaders(colour_folder)
    model = TransferModel(backbone, build_head(HeadConfig(), backbone.feature_dim, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (stage,) = get_strategy("finetune", last_n=1).plan(backbone.group_names(), 2, 1e-2, 1)
    history = run_stage(model, stage, loader, loader, loss_for("classification"), "classification",
                        LoopConfig(verbose=False, freeze_bn_stats=False))
    assert len(history) == 2 and {"train_loss", "val_loss", "val_accuracy"} <= set(history[0])
    after = {k: v.cpu() for k, v in model.state_dict().items()}  # training may have left it on a GPU
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("head.") for k in changed)
    assert any(k.startswith("backbone.body.conv_head") or k.startswith("backbone.body.bn2") for k in changed)
    frozen = [k for k in before if k.startswith(("backbone.body.conv_stem", "backbone.body.bn1.",
                                                  "backbone.body.blocks.0"))]
    assert frozen and not set(frozen) & changed, "frozen groups (weights and BatchNorm statistics) must not change"


def test_freeze_bn_stats_keeps_trainable_batchnorm_statistics(colour_folder):
    torch.manual_seed(0)
    backbone, loader = _loaders(colour_folder)
    model = TransferModel(backbone, build_head(HeadConfig(), backbone.feature_dim, 3))
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    (stage,) = get_strategy("full").plan(backbone.group_names(), 1, 1e-2, 1)
    run_stage(model, stage, loader, loader, loss_for("classification"), "classification",
              LoopConfig(verbose=False, freeze_bn_stats=True))
    assert all(torch.equal(v, model.state_dict()[k].cpu()) for k, v in stats.items())


def test_early_stopping_keeps_the_best_epoch(colour_folder):
    torch.manual_seed(0)
    backbone, loader = _loaders(colour_folder)
    head = build_head(HeadConfig(), backbone.feature_dim, 3)
    feats = torch.randn(24, backbone.feature_dim)
    labels = torch.as_tensor(np.arange(24) % 3)
    train = torch.utils.data.TensorDataset(torch.arange(24), feats, labels)
    val = torch.utils.data.TensorDataset(torch.arange(24), feats, labels.roll(1))
    # validation labels disagree with training labels: memorising raises validation loss, so training stops
    (stage,) = get_strategy("features").plan([], 1, 5e-2, 200)
    history = run_stage(head, stage, DataLoader(train, batch_size=8), DataLoader(val, batch_size=8),
                        loss_for("classification"), "classification", LoopConfig(verbose=False, patience=2))
    assert len(history) < 200
    best = min(r["val_loss"] for r in history)
    with torch.no_grad():
        final = loss_for("classification")(head.cpu()(feats), labels.roll(1)).item()
    assert final == pytest.approx(best, rel=1e-4), "the best epoch's weights must be restored"


def test_a_stage_never_leaves_weights_worse_than_it_started_with(colour_folder):
    torch.manual_seed(0)
    backbone, loader = _loaders(colour_folder)
    model = TransferModel(backbone, build_head(HeadConfig(), backbone.feature_dim, 3))
    (probe,) = get_strategy("finetune", last_n=1).plan(backbone.group_names(), 3, 1e-2, 1)
    run_stage(model, probe, loader, loader, loss_for("classification"), "classification", LoopConfig(verbose=False))
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    # an absurd learning rate wrecks every epoch: the stage must hand back the weights it started from
    (wreck,) = get_strategy("full").plan(backbone.group_names(), 2, 1e3, 1)
    history = run_stage(model, wreck, loader, loader, loss_for("classification"), "classification",
                        LoopConfig(verbose=False, keep_start=True, grad_clip=0))
    assert all(not np.isfinite(r["val_loss"]) or r["val_loss"] > 0 for r in history)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trained.items())


def test_beats_start_needs_a_gain_beyond_validation_noise():
    gen = torch.Generator().manual_seed(0)
    start = torch.rand(40, generator=gen) * 2
    noise = torch.randn(40, generator=gen) * 0.5
    # the tweets case: mean loss lower by a hair, rows scattered either way - keep the probe
    assert not beats_start(start + noise - noise.mean() - 0.001, start)
    assert beats_start(start - 0.3 + 0.05 * noise, start)  # a clear, consistent gain on most rows
    assert not beats_start(start + 0.1, start)
    assert beats_start(start[:1] - 0.1, start[:1])  # one row: nothing to estimate noise from, plain comparison
    assert beats_start(start, None)  # no per-row losses (a custom loss): plain lowest-loss selection


def test_a_noisy_gain_keeps_the_starting_weights():
    torch.manual_seed(0)
    head = build_head(HeadConfig(), 16, 3)
    gen = torch.Generator().manual_seed(10)
    # features unrelated to the labels: what training on one half teaches about the other half is noise (this
    # seed gives two epochs whose mean validation loss dips below the start's by less than half a standard error)
    feats, labels = torch.randn(60, 16, generator=gen), torch.as_tensor(np.arange(60) % 3)
    train = DataLoader(torch.utils.data.TensorDataset(torch.arange(30), feats[:30], labels[:30]), batch_size=10)
    val = DataLoader(torch.utils.data.TensorDataset(torch.arange(30), feats[30:], labels[30:]), batch_size=10)
    with torch.no_grad():
        start_loss = loss_for("classification")(head(feats[30:]), labels[30:]).item()
    start = {k: v.clone() for k, v in head.state_dict().items()}
    (stage,) = get_strategy("features").plan([], 1, 1e-2, 4)
    history = run_stage(head, stage, train, val, loss_for("classification"), "classification",
                        LoopConfig(verbose=False, keep_start=True, patience=10))
    lower = [r for r in history if r["val_loss"] < start_loss]
    assert lower, "the case must have epochs that plain lowest-loss selection would take"
    assert all(r["beats_start"] is False for r in lower)
    assert all(torch.equal(v, head.state_dict()[k].cpu()) for k, v in start.items())
