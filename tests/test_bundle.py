"""Bundles too large to read, or zip bombs, are refused from the zip's directory before a member is inflated."""

import json
import os
import tracemalloc
import zipfile

import pytest

import headstart as hs
from headstart import bundle
from headstart.bundle import CONFIG, WEIGHTS, read_bundle, read_bundle_config

CONFIG_JSON = json.dumps({"format": bundle.FORMAT, "format_version": 1, "modality": "image",
                          "task": "classification", "backbone": {}, "head": {}, "labels": []})


def _crafted(path: str, weights_bytes: int, compression: int) -> str:
    """A bundle whose weights member is `weights_bytes` zeros, streamed in 1 MiB writes of one buffer: the test
    never holds the member in memory."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr(CONFIG, CONFIG_JSON)
        with zf.open(WEIGHTS, "w") as f:
            for start in range(0, weights_bytes, len(chunk)):
                f.write(chunk[: weights_bytes - start])
    return path


@pytest.fixture
def no_member_read(monkeypatch):
    """Fails the test if any member of any zip is opened for reading."""
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def watch(self, name, mode="r", *args, **kwargs):
        if mode == "r":
            opened.append(getattr(name, "filename", name))
        return real_open(self, name, mode, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", watch)
    return opened


def test_a_member_over_its_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch, no_member_read):
    path = _crafted(str(tmp_path / "big.hs"), 3 << 20, zipfile.ZIP_STORED)  # 3 MiB, stored: ratio 1
    monkeypatch.setattr(bundle, "MAX_WEIGHTS_BYTES", 2 << 20)  # the real limit, lowered to keep the test cheap
    with pytest.raises(hs.BundleError) as err:
        hs.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {WEIGHTS} holds 3,145,728 bytes, over headstart's limit of 2,097,152")
    assert "re-save the model with headstart" in message and "\n" not in message
    assert no_member_read == [], "refused from the directory, before any member was inflated"

    monkeypatch.setattr(bundle, "MAX_CONFIG_BYTES", 10)  # the config member has its own, smaller limit
    monkeypatch.setattr(bundle, "MAX_WEIGHTS_BYTES", 4 << 20)
    with pytest.raises(hs.BundleError, match=f"{CONFIG} holds .* over headstart's limit of 10 "):
        read_bundle(path)


def test_the_config_is_read_without_reading_the_weights(tmp_path, monkeypatch, no_member_read):
    path = _crafted(str(tmp_path / "large.hs"), 32 << 20, zipfile.ZIP_STORED)  # 32 MiB of weights
    tracemalloc.start()
    try:
        config = read_bundle_config(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert config["task"] == "classification"
    assert no_member_read == [CONFIG] and peak < 4 << 20, f"only {CONFIG} read (peak {peak:,} bytes)"
    folder = tmp_path / "model"  # a bundle folder: the same
    folder.mkdir()
    (folder / CONFIG).write_text(CONFIG_JSON)
    with open(folder / WEIGHTS, "wb") as f:
        f.truncate(32 << 20)
    read = []
    real = bundle._read_file
    monkeypatch.setattr(bundle, "_read_file", lambda p, name: read.append(name) or real(p, name))
    assert read_bundle_config(str(folder))["task"] == "classification" and read == [CONFIG]


def test_a_bundle_folder_member_over_its_size_limit_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / CONFIG).write_text(CONFIG_JSON)
    with open(folder / WEIGHTS, "wb") as f:
        f.truncate(3 << 20)  # sparse: nothing written, nothing allocated
    monkeypatch.setattr(bundle, "MAX_WEIGHTS_BYTES", 2 << 20)
    with pytest.raises(hs.BundleError, match=f"{WEIGHTS} holds 3,145,728 bytes, over headstart's limit"):
        read_bundle(str(folder))


def test_a_zip_bomb_is_refused_by_its_compression_ratio(tmp_path, no_member_read):
    # 64 MiB of zeros deflate to ~64 KB (about 1000:1): under the real size limits, refused by the ratio alone
    path = _crafted(str(tmp_path / "bomb.hs"), 64 << 20, zipfile.ZIP_DEFLATED)
    assert os.path.getsize(path) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(hs.BundleError) as err:
            hs.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert message.startswith(f"{path}: {WEIGHTS} is compressed ") and "over the 100:1" in message
    assert "zip bomb" in message and "\n" not in message
    assert no_member_read == [] and peak < 4 << 20, f"nothing large allocated (peak {peak:,} bytes)"


def test_a_member_that_claims_less_than_it_holds_is_cut_at_its_claim_and_refused(tmp_path):
    """The directory is the only size zipfile trusts: a member lying about its size inflates no further."""
    path = _crafted(str(tmp_path / "liar.hs"), 2 << 20, zipfile.ZIP_DEFLATED)
    with open(path, "r+b") as f:  # shrink the declared size in the central directory: 2 MiB -> 1 KiB
        raw = f.read()
        at = raw.rindex(b"PK\x01\x02")  # the last central directory entry is the weights'
        assert raw[at + 24:at + 28] == (2 << 20).to_bytes(4, "little")  # its uncompressed size
        f.seek(at + 24)
        f.write((1 << 10).to_bytes(4, "little"))
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo(WEIGHTS).file_size == 1 << 10
    with pytest.raises(hs.BundleError, match="damaged or unreadable zip .*re-save the model with headstart"):
        read_bundle(path)


def test_real_bundles_stored_or_recompressed_are_within_the_limits(tmp_path):
    from conftest import tiny_colour_bundle

    path, data = tiny_colour_bundle(str(tmp_path))
    deflated = str(tmp_path / "deflated.hs")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    assert hs.load(deflated).predict(data) == hs.load(path).predict(data)


def _with_backbone_file(path: str, name: str, size: int, compression: int = zipfile.ZIP_STORED) -> str:
    """`path` (a crafted bundle) plus a backbone file `name` of `size` zeros, streamed in 1 MiB writes."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "a", compression) as zf, zf.open(name, "w") as f:
        for start in range(0, size, len(chunk)):
            f.write(chunk[: size - start])
    return path


def test_backbone_files_over_their_limits_are_refused_before_they_are_read(tmp_path, monkeypatch, no_member_read):
    path = _with_backbone_file(_crafted(str(tmp_path / "big.hs"), 1024, zipfile.ZIP_STORED),
                               "backbone/tokenizer.json", 3 << 20)
    monkeypatch.setattr(bundle, "MAX_FILE_BYTES", 2 << 20)  # each file's limit, lowered to keep the test cheap
    with pytest.raises(hs.BundleError, match="backbone/tokenizer.json holds 3,145,728 bytes, over headstart's limit "
                                             "of 2,097,152 .*re-save the model with headstart"):
        read_bundle(path)
    monkeypatch.setattr(bundle, "MAX_FILE_BYTES", 4 << 20)
    monkeypatch.setattr(bundle, "MAX_FILES_BYTES", 2 << 20)  # and all of them together
    with pytest.raises(hs.BundleError, match="1 backbone files of 3,145,728 bytes, over headstart's limit of 16 "
                                             "files, 2,097,152 bytes"):
        read_bundle(path)
    monkeypatch.setattr(bundle, "MAX_FILES_BYTES", 4 << 20)
    monkeypatch.setattr(bundle, "MAX_FILES", 0)
    with pytest.raises(hs.BundleError, match="over headstart's limit of 0 files"):
        read_bundle(path)
    assert no_member_read == []


def test_a_backbone_file_zip_bomb_is_refused_by_its_ratio(tmp_path, no_member_read):
    path = _with_backbone_file(_crafted(str(tmp_path / "bomb.hs"), 1024, zipfile.ZIP_STORED),
                               "backbone/vocab.txt", 8 << 20, zipfile.ZIP_DEFLATED)
    with pytest.raises(hs.BundleError, match="backbone/vocab.txt is compressed .*zip bomb"):
        read_bundle(path)
    assert no_member_read == []


@pytest.mark.parametrize("name", ["backbone/../../escaped.json", "backbone/sub/config.json", "backbone/.hidden",
                                  "backbone/"])
def test_a_backbone_file_must_have_a_plain_name(tmp_path, name, no_member_read):
    path = _with_backbone_file(_crafted(str(tmp_path / "odd.hs"), 1024, zipfile.ZIP_STORED), name, 10)
    with pytest.raises(hs.BundleError, match=f"member '{name}' is not a plain file name under backbone/"):
        read_bundle(path)
    assert no_member_read == []


def test_a_bundle_folder_backbone_file_over_its_limit_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    (folder / "backbone").mkdir(parents=True)
    (folder / CONFIG).write_text(CONFIG_JSON)
    (folder / WEIGHTS).write_bytes(b"")
    with open(folder / "backbone" / "tokenizer.json", "wb") as f:
        f.truncate(3 << 20)  # sparse: nothing written, nothing allocated
    monkeypatch.setattr(bundle, "MAX_FILE_BYTES", 2 << 20)
    with pytest.raises(hs.BundleError, match="backbone/tokenizer.json holds 3,145,728 bytes, over headstart's limit"):
        read_bundle(str(folder))
