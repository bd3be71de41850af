"""Self-supervised pre-training: the SimCLR loss, and pretrain -> `fit --backbone DIR` for images and texts."""

import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE

import headstart as hs
from headstart import progress
from headstart.bundle import read_bundle
from headstart.methods.pretrain import PretrainSettings, nt_xent, pretrain


def test_nt_xent_is_low_for_matching_views_and_chance_for_identical_embeddings():
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    matching = nt_xent(z, z + 0.01 * torch.randn_like(z), temperature=0.2)
    shuffled = nt_xent(z, z[torch.randperm(16)], temperature=0.2)
    assert matching < shuffled
    same = torch.ones(16, 8)  # every view alike: the partner is one of 31 equals
    assert math.isclose(float(nt_xent(same, same, 0.5)), math.log(31), rel_tol=1e-5)


def test_image_pretrain_writes_a_backbone_that_fit_accepts(colour_folder, tmp_path):
    out = str(tmp_path / "ssl")
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", "pretrain", colour_folder, "--backbone", TINY,
                           "--image-size", str(TINY_SIZE), "--scratch", "--epochs", "2", "--batch-size", "12",
                           "--out", out, "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    config, state = read_bundle(out)
    assert config["pretrain"]["objective"] == "simclr" and len(config["pretrain"]["losses"]) == 2
    assert all(np.isfinite(config["pretrain"]["losses"]))
    fresh = hs.create_backbone(TINY, pretrained=False, image_size=TINY_SIZE)
    trained = {k[len("backbone."):]: v for k, v in state.items()}
    assert trained.keys() == fresh.state_dict().keys()

    with pytest.raises(hs.HeadstartError, match="--backbone"):
        hs.load(out)  # a backbone, not a model: the message says how to use it
    clf = hs.ImageClassifier(backbone=out, strategy="features", head_epochs=5, batch_size=8, verbose=False)
    clf.fit(colour_folder)
    assert clf.model_.backbone.spec.preprocess.size == TINY_SIZE  # the pre-training size travels with it
    for k, v in clf.model_.backbone.state_dict().items():
        assert torch.equal(v, trained[k]), f"fit must start from the pre-trained weights ({k})"


def test_image_pretrain_skips_unreadable_files_as_fit_does(colour_folder, tmp_path):
    # bench/reliability.py: one corrupt image ended pretrain with "error: : cannot identify image file" (no file
    # named), and a named pipe called *.png would have made it wait forever.
    for name, data in [("broken.png", b"not a png"), ("cut.png", b"\x89PNG\r\n\x1a\n\x00\x00")]:
        with open(os.path.join(colour_folder, "red", name), "wb") as f:
            f.write(data)
    os.mkfifo(os.path.join(colour_folder, "red", "pipe.png"))
    out = pretrain(colour_folder, TINY, str(tmp_path / "ssl"), "image",
                   PretrainSettings(epochs=1, batch_size=12, image_size=TINY_SIZE), pretrained=False, verbose=False)
    config, _ = read_bundle(out)
    assert config["pretrain"]["inputs"] == 36  # the 36 readable images of colour_folder


def test_masked_lm_adapts_the_packaged_text_encoder(tmp_path):
    from headstart.data.tweets import load_tweets

    texts = load_tweets()[0][:48]
    settings = PretrainSettings(epochs=1, batch_size=16, max_length=32, lr=1e-4)
    out = pretrain(texts, "minilm_l6", str(tmp_path / "dapt"), modality="text", settings=settings, verbose=False)
    config, _ = read_bundle(out)
    assert config["pretrain"]["objective"] == "masked-lm" and config["pretrain"]["inputs"] == 48
    assert config["pretrain"]["losses"][0] < 20, "MLM loss on real tweets must be finite and sane"
    plain = hs.create_backbone("minilm_l6").eval()
    adapted = hs.create_backbone(out).eval()
    batch = plain.tokenizer(texts[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = plain(dict(batch)), adapted(dict(batch))
    assert a.shape == b.shape and not torch.allclose(a, b), "the adapted encoder must differ from the plain one"
    assert os.path.isfile(os.path.join(out, "model.safetensors"))


def test_text_pretrain_counts_the_files_it_cannot_read(tmp_path, monkeypatch):
    # a .txt file in Latin-1 (not UTF-8) was dropped without a word: now the run says how many it skipped
    from headstart.data.tweets import load_tweets

    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for i, text in enumerate(load_tweets()[0][:16]):
        (folder / f"{i:02d}.txt").write_text(text, encoding="utf-8")
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    settings = PretrainSettings(epochs=1, batch_size=16, max_length=16, lr=1e-4)
    said = io.StringIO()
    monkeypatch.setattr(progress.console, "file", said)  # what the run prints, whatever stream pytest captures
    out = pretrain(str(folder), "minilm_l6", str(tmp_path / "dapt"), modality="text", settings=settings)
    config, _ = read_bundle(out)
    assert config["pretrain"]["inputs"] == 16
    assert "skipped 1 empty or unreadable (not UTF-8) text(s)" in said.getvalue()


def test_pretrain_resume_without_a_checkpoint_says_so(colour_folder, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "headstart.cli", "pretrain", colour_folder, "--backbone", TINY,
                           "--image-size", str(TINY_SIZE), "--scratch", "--epochs", "1", "--batch-size", "12",
                           "--out", str(tmp_path / "none"), "--resume", "--quiet"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "no checkpoint to resume from" in proc.stderr, proc.stderr[-2000:]
    assert "headstart pretrain" in proc.stderr  # what to run first
