"""Every method trains through loop.run_loop, and gives the per-step losses its own loop gave before (issue 25).

Each test keeps a copy of the method's former loop (`_old_*`, as it was at 3090260) as the reference, runs it and
the method's entry point from the same weights and seeds on a tiny problem, and compares every step's loss. On one
process nothing is reordered (the loop calls the same ops in the same order), so they are equal to the bit. The
references run on the CPU: where CUDA is present the ported loops train there, so those comparisons are skipped.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE
from torch.nn import functional as F
from torch.utils.data import DataLoader

import headstart as hs
from headstart import loop
from headstart._runtime import adamw
from headstart.bundle import read_bundle
from headstart.checkpoint import Checkpointer
from headstart.data.labeled import LabeledData
from headstart.heads import HeadConfig, Standardize, TransferModel, build_head, loss_for
from headstart.methods import adapt, continual, fewshot, pretrain
from headstart.methods.multitask import MultiTaskHeads, MultiTaskModel

# the former loops as copied here run on the CPU; on a CUDA machine run_loop places the models on the GPU
on_cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the reference loops run on the CPU")


@pytest.fixture
def captured(monkeypatch):
    """The LoopResult of every run_loop call, in order (the methods keep only epoch summaries)."""
    results = []
    original = loop.run_loop

    def recording(*args, **kwargs):
        results.append(original(*args, **kwargs))
        return results[-1]

    # text_finetune.tune_text_encoder runs both text tunings (SetFit's and the Trainer's recipe); raising: a module
    # that stopped importing run_loop would otherwise go unrecorded without a word
    for module in ("multitask", "continual", "pretrain", "adapt", "text_finetune"):
        monkeypatch.setattr(f"headstart.methods.{module}.run_loop", recording)
    return results


# --- multi-task heads -------------------------------------------------------------------------------------------
def _old_multitask(model: MultiTaskModel, x, y, rows, gen) -> list[float]:
    opt = adamw(model.heads_.parameters(), lr=model.lr, weight_decay=1e-4)
    steps = model.epochs * -(-len(rows) // model.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=model.lr, total_steps=max(steps, 1))
    losses = []
    for _ in range(model.epochs):
        model.heads_.train()
        for idx in rows[torch.randperm(len(rows), generator=gen)].split(model.batch_size):
            loss = model._loss(model.heads_(x[idx]), {n: t[idx] for n, t in y.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    return losses


def multitask_problem(seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(50, 12)
    y = {"kind": (x[:, 0] > 0).long(), "size": x[:, 1] * 2.0}
    model = MultiTaskModel(tasks={"kind": "classification", "size": "regression"}, loss_weights={"size": 0.5},
                           hidden=16, epochs=4, batch_size=16, verbose=False)
    model.heads_ = MultiTaskHeads(12, 16, {"kind": 2, "size": 1})
    model.heads_.trunk[0].set_statistics(x)
    return model, x, y, torch.arange(45)  # 45 rows: the last batch is short


@on_cpu_only
def test_multitask_steps_as_before(captured):
    model, x, y, rows = multitask_problem()
    start = copy.deepcopy(model.heads_.state_dict())
    torch.manual_seed(1)  # dropout draws from the global generator
    before = _old_multitask(model, x, y, rows, torch.Generator().manual_seed(0))
    old_weights = copy.deepcopy(model.heads_.state_dict())
    model.heads_.load_state_dict(start)
    torch.manual_seed(1)
    model._train(x, y, rows, torch.Generator().manual_seed(0))
    assert captured[0].step_losses == before and len(before) == 4 * 3
    for k, v in model.heads_.state_dict().items():
        assert torch.equal(v, old_weights[k]), k


# --- continual heads (finetune, rehearsal, LwF, EWC) -------------------------------------------------------------
def _old_continual(head, n_classes, x, y, settings) -> tuple[list[float], torch.nn.Module]:
    """continual.train_incremental's former loop, rehearsal and the buffer left out (x, y are its rows)."""
    torch.manual_seed(settings.seed)
    old_head = copy.deepcopy(head).eval()
    n_old = continual.output_layer(old_head).out_features
    new_head = continual.grow_head(head, n_classes)
    anchor = fisher = None
    if settings.method == "ewc":
        fisher = continual.fisher_diagonal(old_head, x)
        anchor = {k: v.detach().clone() for k, v in old_head.named_parameters()}
    params = list(new_head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = adamw(params, lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs * -(-len(x) // settings.batch_size))
    t, losses = settings.temperature, []
    for _ in range(settings.epochs):
        new_head.train()
        for idx in torch.randperm(len(x), generator=gen).split(settings.batch_size):
            xb, yb = x[idx], y[idx]
            logits = new_head(xb)
            loss = F.cross_entropy(logits, yb)
            if settings.method == "lwf":
                with torch.no_grad():
                    target = (old_head(xb) / t).softmax(-1)
                distill = F.kl_div((logits[:, :n_old] / t).log_softmax(-1), target, reduction="batchmean")
                loss = loss + settings.lwf_weight * t * t * distill
            elif settings.method == "ewc":
                loss = loss + settings.ewc_weight / 2 * continual._ewc_penalty(new_head, anchor, fisher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    return losses, new_head.eval()


def continual_problem(seed: int = 0):
    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(8, 3))
    x = torch.randn(40, 8)
    return head, x, (x[:, :2].sum(1) > 0).long() + 3 * (x[:, 2] > 0.5).long()  # classes 0, 1 old; 3, 4 new


@on_cpu_only
@pytest.mark.parametrize("method", ["finetune", "lwf", "ewc"])
def test_continual_steps_as_before(captured, method):
    head, x, y = continual_problem()
    settings = continual.ContinualSettings(method=method, epochs=3, batch_size=16, memory_per_class=0)
    before, old_new_head = _old_continual(copy.deepcopy(head), 5, x, y, settings)
    new_head = continual.train_incremental(copy.deepcopy(head), 5, x.numpy(), y.numpy(), settings)
    assert captured[0].step_losses == before and len(before) == 3 * 3
    for k, v in new_head.state_dict().items():
        assert torch.equal(v, old_new_head.state_dict()[k]), k


# --- pre-training: SimCLR, masked LM ------------------------------------------------------------------------------
def _old_simclr(backbone, paths, settings) -> list[float]:
    pre, dim = backbone.spec.preprocess, backbone.feature_dim
    projector = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.ReLU(),
                                    torch.nn.Linear(dim, settings.projection_dim))
    backbone.train()
    projector.train()
    loader = DataLoader(pretrain.TwoViews(paths, pretrain.simclr_augment(pre.size, pre.mean, pre.std)),
                        batch_size=settings.batch_size, shuffle=True, drop_last=len(paths) > settings.batch_size,
                        generator=torch.Generator().manual_seed(settings.seed))
    opt = adamw([*backbone.parameters(), *projector.parameters()], lr=settings.lr or 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, settings.epochs * len(loader)))
    losses = []
    for _ in range(settings.epochs):
        for v1, v2 in loader:
            loss = pretrain.nt_xent(projector(backbone(v1)), projector(backbone(v2)), settings.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    return losses


@on_cpu_only
def test_simclr_steps_as_before(captured, colour_folder):
    paths = sorted(str(p) for p in Path(colour_folder).rglob("*.png"))
    settings = pretrain.PretrainSettings(epochs=2, batch_size=12, image_size=TINY_SIZE)
    start = hs.create_backbone(TINY, pretrained=False, image_size=TINY_SIZE)
    old, new = copy.deepcopy(start), copy.deepcopy(start)
    torch.manual_seed(3)  # the projector's initial weights and the augmentations draw from the global generator
    before = _old_simclr(old, paths, settings)
    torch.manual_seed(3)
    epoch_means = pretrain.pretrain_images(new, paths, settings, verbose=False)
    assert captured[0].step_losses == before and len(before) == 2 * 3
    assert epoch_means == pytest.approx([np.mean(before[:3]), np.mean(before[3:])], rel=1e-12)  # equal batches
    for k, v in new.state_dict().items():
        assert torch.equal(v, old.state_dict()[k]), k


def _old_masked_lm(mlm, loader, settings) -> list[float]:
    mlm.train()
    opt = adamw(mlm.parameters(), lr=settings.lr or 5e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, settings.epochs * len(loader)))
    losses = []
    for _ in range(settings.epochs):
        for batch in loader:
            loss = mlm(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(mlm.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    return losses


@on_cpu_only
def test_masked_lm_steps_as_before(captured):
    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

    texts = [f"the {w} sat on the mat number {i}" for i, w in enumerate(["cat", "dog", "bird", "fox"] * 6)]
    settings = pretrain.PretrainSettings(epochs=2, batch_size=8, max_length=16, lr=1e-4)
    start = hs.create_backbone("minilm_l6")
    backbone = copy.deepcopy(start)
    # the reference: the MLM model pretrain_texts builds, trained by the former loop from the same seed
    torch.manual_seed(5)
    mlm = AutoModelForMaskedLM.from_config(start.body.model.config)
    getattr(mlm, mlm.base_model_prefix).load_state_dict(start.body.model.state_dict(), strict=False)
    mlm.tie_weights()
    collator = DataCollatorForLanguageModeling(start.tokenizer, mlm_probability=settings.mask_probability)
    rows = [{"input_ids": ids} for ids in start.tokenizer(texts, truncation=True, max_length=16)["input_ids"]]
    before = _old_masked_lm(mlm, DataLoader(rows, batch_size=8, shuffle=True, collate_fn=collator,
                                            generator=torch.Generator().manual_seed(settings.seed)), settings)
    torch.manual_seed(5)
    pretrain.pretrain_texts(backbone, texts, settings, verbose=False)
    assert captured[0].step_losses == before and len(before) == 2 * 3
    trained = getattr(mlm, mlm.base_model_prefix).state_dict()
    for k, v in backbone.body.model.state_dict().items():
        if k in trained:
            assert torch.equal(v, trained[k]), k


# --- domain adaptation: DANN --------------------------------------------------------------------------------------
def _old_dann(model, source, target_items, epochs, lr, batch_size, seed=0) -> tuple[list[float], list[dict]]:
    backbone, head = model.backbone, model.head
    norm = head[0] if isinstance(head, torch.nn.Sequential) and isinstance(head[0], Standardize) else None
    discriminator = torch.nn.Sequential(torch.nn.Linear(backbone.feature_dim, 256), torch.nn.ReLU(),
                                        torch.nn.Dropout(0.2), torch.nn.Linear(256, 1))
    generator = torch.Generator().manual_seed(seed)
    src = adapt._loader(backbone, source.items, source.targets, True, batch_size, generator)
    tgt = adapt._loader(backbone, target_items, None, True, batch_size, generator)
    groups = [{"params": list(head.parameters()), "lr": lr * 0.1},
              {"params": list(backbone.parameters()), "lr": lr * 0.1},
              {"params": list(discriminator.parameters()), "lr": lr}]
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    opt = adamw(groups, weight_decay=1e-4)
    label_loss, domain_loss = loss_for("classification"), torch.nn.BCEWithLogitsLoss()
    steps, step, losses, history = epochs * len(src), 0, [], []
    target_batches = iter(tgt)
    for epoch in range(1, epochs + 1):
        model.train()
        discriminator.train()
        for m in adapt.batchnorm_layers(backbone):
            m.eval()
        totals, seen = np.zeros(3), 0
        for _, xs, ys in src:
            try:
                _, xt, _ = next(target_batches)
            except StopIteration:
                target_batches = iter(tgt)
                _, xt, _ = next(target_batches)
            strength = 2.0 / (1.0 + math.exp(-10.0 * step / max(steps, 1))) - 1.0
            fs, ft = backbone(xs), backbone(xt)
            loss_y = label_loss(head(fs), ys)
            feats = torch.cat([fs, ft])
            domains = torch.cat([torch.zeros(len(fs)), torch.ones(len(feats) - len(fs))])
            logits = discriminator(adapt.reverse_gradient(norm(feats), strength)).squeeze(-1)
            loss_d = domain_loss(logits, domains)
            opt.zero_grad(set_to_none=True)
            (loss_y + loss_d).backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            opt.step()
            step += 1
            losses.append(float((loss_y + loss_d).detach()))
            domain_acc = float(((logits > 0).float() == domains).float().mean())
            totals += np.array([float(loss_y.detach()), float(loss_d.detach()), domain_acc]) * len(ys)
            seen += len(ys)
        history.append({"stage": "dann", "epoch": epoch, "train_loss": totals[0] / seen,
                        "domain_loss": totals[1] / seen, "domain_accuracy": totals[2] / seen})
    return losses, history


def dann_problem(folder: str, seed: int = 0):
    paths = sorted(str(p) for p in Path(folder).rglob("*.png"))
    classes = sorted({Path(p).parent.name for p in paths})
    source = LabeledData(paths, np.array([classes.index(Path(p).parent.name) for p in paths]), classes)
    torch.manual_seed(seed)
    backbone = hs.create_backbone(TINY, pretrained=False, image_size=TINY_SIZE)
    return TransferModel(backbone, build_head(HeadConfig(kind="linear"), backbone.feature_dim, len(classes))), source


@on_cpu_only
def test_dann_steps_as_before(captured, colour_folder):
    model, source = dann_problem(colour_folder)
    old_model = copy.deepcopy(model)
    targets = source.items[::2]  # 18 target images against 36 source: the target loader is cycled
    torch.manual_seed(7)  # the discriminator's weights and its dropout draw from the global generator
    before, old_history = _old_dann(old_model, source, targets, epochs=2, lr=1e-3, batch_size=12)
    torch.manual_seed(7)
    history = adapt.dann_train(model, source, targets, epochs=2, lr=1e-3, batch_size=12, verbose=False)
    assert captured[0].step_losses == before and len(before) == 2 * 3
    for new, old in zip(history, old_history):
        assert {k: new[k] for k in old} == old
    for k, v in model.state_dict().items():
        assert torch.equal(v, old_model.state_dict()[k]), k


# --- SetFit's contrastive tuning ---------------------------------------------------------------------------------
def _old_contrastive_tune(backbone, texts, labels, epochs, lr, batch_size, seed=0) -> tuple[list[float], list[dict]]:
    labels, rng = torch.as_tensor(np.asarray(labels)), np.random.default_rng(seed)
    backbone.train()
    for p in backbone.parameters():
        p.requires_grad_(True)
    opt = adamw(backbone.parameters(), lr=lr)
    steps, history = [], []
    for epoch in range(1, epochs + 1):
        order, losses = rng.permutation(len(texts)), []
        for rows in np.array_split(order, -(-len(order) // batch_size)):
            enc = backbone.tokenizer([texts[r] for r in rows], padding=True, truncation=True,
                                     max_length=backbone.spec.preprocess.max_length, return_tensors="pt")
            loss = fewshot.pair_loss(backbone(dict(enc)), labels[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        steps += losses
        history.append({"stage": "setfit", "epoch": epoch, "train_loss": float(np.mean(losses)), "texts": len(texts)})
    return steps, history


SETFIT_TEXTS = [f"{w} review number {i}: {'great' if i % 2 else 'awful'} stuff" for i, w in
                enumerate(["short", "long", "odd", "fine", "plain"] * 4)]


@on_cpu_only
def test_setfit_tuning_steps_as_before(captured):
    labels = np.arange(len(SETFIT_TEXTS)) % 2
    start = hs.create_backbone("minilm_l6")
    old, new = copy.deepcopy(start), copy.deepcopy(start)
    torch.manual_seed(11)  # the encoder's dropout draws from the global generator
    before, old_history = _old_contrastive_tune(old, SETFIT_TEXTS, labels, epochs=2, lr=4e-5, batch_size=8)
    torch.manual_seed(11)
    logged = []
    history = fewshot.contrastive_tune(new, SETFIT_TEXTS, labels, epochs=2, lr=4e-5, batch_size=8, verbose=False,
                                       log=logged.append)
    assert captured[0].step_losses == before and len(before) == 2 * 3  # 20 texts: batches of 7, 7 and 6
    assert history == old_history == logged
    for k, v in new.state_dict().items():
        assert torch.equal(v, old.state_dict()[k]), k


def test_setfit_tuning_past_its_deadline_stops_as_before():
    """As before: no batch starts after the deadline, and the pass it ended in says so (and is logged)."""
    backbone, logged = hs.create_backbone("minilm_l6"), []
    start = copy.deepcopy(backbone.state_dict())
    history = fewshot.contrastive_tune(backbone, SETFIT_TEXTS, np.arange(20) % 2, epochs=3, verbose=False,
                                       deadline=0.0, log=logged.append)
    assert len(history) == len(logged) == 1 and history[0]["stopped"] == "time limit"
    assert history[0].keys() == logged[0].keys() and math.isnan(history[0]["train_loss"])  # nan: no step taken
    assert all(torch.equal(v, start[k]) for k, v in backbone.state_dict().items())


# --- checkpoints: pre-training resumes after its last finished epoch --------------------------------------------
def test_an_interrupted_pretrain_resumes_to_the_weights_of_an_uninterrupted_one(colour_folder, tmp_path, monkeypatch):
    settings = pretrain.PretrainSettings(epochs=3, batch_size=12, image_size=TINY_SIZE)
    whole = pretrain.pretrain(colour_folder, TINY, str(tmp_path / "whole"), settings=settings, pretrained=False,
                              verbose=False)
    assert not (tmp_path / "whole" / "checkpoint").exists()  # removed once the bundle is written

    saves, save = [], Checkpointer.save

    def crash_after_the_first_epoch(self, state):
        save(self, state)
        saves.append(state.epoch)
        raise KeyboardInterrupt  # as if the run were killed there

    monkeypatch.setattr(Checkpointer, "save", crash_after_the_first_epoch)
    out = str(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain(colour_folder, TINY, out, settings=settings, pretrained=False, verbose=False)
    monkeypatch.setattr(Checkpointer, "save", save)
    assert saves == [1] and (tmp_path / "cut" / "checkpoint").exists()
    with pytest.raises(hs.HeadstartError, match="different run"):  # other options: refused, not mixed
        pretrain.pretrain(colour_folder, TINY, out, settings=pretrain.PretrainSettings(epochs=4, batch_size=12,
                          image_size=TINY_SIZE), pretrained=False, verbose=False, resume=True)
    pretrain.pretrain(colour_folder, TINY, out, settings=settings, pretrained=False, verbose=False, resume=True)
    (config_whole, state_whole), (config_cut, state_cut) = read_bundle(whole), read_bundle(out)
    assert config_cut["pretrain"]["losses"] == config_whole["pretrain"]["losses"]
    for k, v in state_whole.items():
        assert torch.equal(state_cut[k], v), k
